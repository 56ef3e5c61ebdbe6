r"""Autograd functions of the binarizers: forward ``sign`` (with sign(0) = +1), custom backward.

Each function follows the gradient estimator of its paper, as tabulated in ALGORITHMS.md:

=================  ===============================================================
sign-STE           :math:`g \cdot 1\{-1 < x < 1\}`
ApproxSign         :math:`g \cdot (2 - 2|x|)` on :math:`[-1, 1)`, 0 elsewhere
A&B mask           :math:`g \cdot \frac{d}{dx}\tanh(1.5x)`
SwishSign          :math:`g \cdot \beta(2 - \beta x \tanh(\beta x / 2)) / (1 + \cosh(\beta x))`
identity STE       :math:`g`
=================  ===============================================================

None of them modifies its input in place.
"""
import torch

__all__ = [
    "sign", "sign_ste", "approx_sign", "mask_sign", "swish_sign", "identity_sign", "stochastic_sign",
    "sign_with_surrogate", "scaled_sign_clamp_ste", "round_ste", "power_of_two",
]


def sign(x: torch.Tensor) -> torch.Tensor:
    r"""The binarization sign: +1 where ``x >= 0`` (negative zero included), -1 elsewhere.

    ``torch.sign`` maps 0 to 0, which makes activations ternary and breaks bit-packing.
    """
    # x + 0.0 turns -0.0 into +0.0, so copysign then agrees with x >= 0; two fast passes
    # (torch.where against scalars is several times slower on CPU).
    out = x + 0.0
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), out, out=out)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # 2 + 2x on [-1, 0) and 2 - 2x on [0, 1) are both 2 - 2|x| there, and <= 0 outside.
        return grad * (2.0 - 2.0 * x.abs()).clamp_(min=0.0)


class _MaskSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        t = torch.tanh(ctx.slope * x)
        return grad * (ctx.slope * (1.0 - t * t)), None


class _SwishSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(x)
        ctx.beta = beta
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        b = ctx.beta
        bx = b * x
        d = b * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))
        return grad * d, None


class _IdentitySign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _StochasticSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        p_plus = ((x + 1.0) * 0.5).clamp_(0.0, 1.0)
        return torch.where(torch.rand_like(x) < p_plus, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0)


class _ScaledSignClampSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, scale):
        s = sign(v)
        ctx.save_for_backward(v, s)
        return s * scale

    @staticmethod
    def backward(ctx, grad):
        v, s = ctx.saved_tensors
        grad_v = grad * ((v >= -1.0) & (v <= 1.0)).to(grad.dtype)
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = (grad * s).sum(dim=tuple(range(1, grad.dim())), keepdim=True)
        return grad_v, grad_scale


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    r"""sign(x), gradient :math:`g \cdot 1\{-1 < x < 1\}` (BinaryNet, XNOR-Net)."""
    return _SignSTE.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    r"""sign(x), gradient of Bi-Real Net's piecewise polynomial: :math:`g \cdot \max(0, 2 - 2|x|)`."""
    return _ApproxSign.apply(x)


def mask_sign(x: torch.Tensor, slope: float = 1.5) -> torch.Tensor:
    r"""sign(x), gradient of the A&B BNN mask :math:`\mathrm{Mask}(x) = 2\sigma(2 \cdot slope\, x) - 1
    = \tanh(slope \cdot x)`."""
    return _MaskSign.apply(x, float(slope))


def swish_sign(x: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    r"""sign(x), gradient of larq's SwishSign:
    :math:`g \cdot \beta(2 - \beta x \tanh(\beta x / 2)) / (1 + \cosh(\beta x))`."""
    return _SwishSign.apply(x, float(beta))


def identity_sign(x: torch.Tensor) -> torch.Tensor:
    r"""sign(x), gradient passed through unchanged."""
    return _IdentitySign.apply(x)


def stochastic_sign(x: torch.Tensor) -> torch.Tensor:
    r"""+1 with probability :math:`\mathrm{clip}((x + 1) / 2, 0, 1)`, else -1; gradient as sign-STE
    (BinaryNet's stochastic binarization)."""
    return _StochasticSign.apply(x)


def sign_with_surrogate(x: torch.Tensor, surrogate) -> torch.Tensor:
    r"""sign(x) in the forward pass, the gradient of ``surrogate(x)`` in the backward pass."""
    soft = surrogate(x)
    return soft + (sign(x) - soft).detach()


def scaled_sign_clamp_ste(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""``scale * sign(v)`` with the gradient of ``clamp(v, -1, 1)`` for ``v`` (inclusive bounds, not
    multiplied by ``scale``) and :math:`\sum g \cdot sign(v)` for ``scale``; the weight estimator of the
    Bi-Real / ReActNet / A&B code. ``scale`` has shape ``(C_out, 1, ..., 1)``.
    """
    return _ScaledSignClampSTE.apply(v, scale)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    r"""round(x) with an identity gradient."""
    return _RoundSTE.apply(x)


def power_of_two(x: torch.Tensor) -> torch.Tensor:
    r"""Nearest power of two in the log domain, :math:`2^{\mathrm{round}(\log_2 x)}`, for ``x > 0``; the
    rounding passes the gradient through."""
    return torch.exp2(round_ste(torch.log2(x)))
