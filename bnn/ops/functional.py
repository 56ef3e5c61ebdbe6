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
    "sign_with_surrogate", "scaled_sign", "xnor_sign", "round_ste", "power_of_two",
]


def sign(x: torch.Tensor) -> torch.Tensor:
    r"""The binarization sign: +1 where ``x >= 0`` (negative zero included), -1 elsewhere.

    ``torch.sign`` maps 0 to 0, which makes activations ternary and breaks bit-packing.
    """
    # x + 0.0 turns -0.0 into +0.0, so copysign then agrees with x >= 0; two fast passes
    # (torch.where against scalars is several times slower on CPU). Detached: sign has no gradient,
    # and copysign(out=) refuses an `out` that requires grad.
    out = x.detach() + 0.0
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


def _one_inclusive(dtype: torch.dtype) -> float:
    """The next value above 1 in ``dtype``: a strict compare against it is the inclusive |v| <= 1."""
    return 1.0 + torch.finfo(dtype).eps


class _ScaledSign(torch.autograd.Function):
    """``scale * sign(v)`` for a weight ``v`` (C_out, ...) and a per-row ``scale`` (C_out, 1, ...).

    grad_v: ``clamp``: g * 1{|v| <= 1} (Bi-Real / ReActNet / A&B code, not multiplied by the scale);
            ``ste``: g * scale * 1{|v| < 1} (the product rule through sign-STE, XNOR-Net).
    grad_scale: sum over the row of g * sign(v).
    Fused so that the weight path costs a few passes over the weight, not a dozen.
    """

    @staticmethod
    def forward(ctx, v, scale, estimator, nonnegative):
        if nonnegative:
            # the caller guarantees scale >= 0 (a mean of absolute values): copysign(scale, v + 0.0) is
            # scale * sign(v) in two passes over the weight
            out = v + 0.0
            torch.copysign(scale, out, out=out)
        else:
            # sign(v) * scale: copysign would drop the sign of a negative scale (a learnable gain below 0),
            # and testing for one would sync a GPU with the host
            out = sign(v).mul_(scale)
        ctx.estimator = estimator
        ctx.save_for_backward(v, scale, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        v, scale, out = ctx.saved_tensors
        grad_v = grad_scale = None
        if ctx.needs_input_grad[0]:
            if ctx.estimator == "clamp":
                one = _one_inclusive(v.dtype)
                grad_v = torch.ops.aten.hardtanh_backward(grad, v, -one, one)
            else:
                grad_v = torch.ops.aten.hardtanh_backward(grad, v, -1.0, 1.0).mul_(scale)
        if ctx.needs_input_grad[1]:
            # sum(g * sign(v)) per row, sign(v) recomputed: dividing sum(g * out) by the scale would need a
            # data-dependent branch for zero scales, a host-device sync on a GPU at every step
            grad_scale = (grad * sign(v)).sum(tuple(range(1, v.dim())), keepdim=True)
        return grad_v, grad_scale, None, None


class _XNORSign(torch.autograd.Function):
    """XNOR-Net weight ``alpha_o * sign(v)``, alpha_o = mean |v_o| (optionally rounded to a power of two),
    with the gradient of that whole expression fused: g * alpha * 1{|v| < 1} through sign-STE, plus,
    unless detached, sign(v) / n * sum(g * sign(v)) * d alpha_q / d alpha through alpha."""

    @staticmethod
    def forward(ctx, v, detach_alpha, power_of_two):
        dims = tuple(range(1, v.dim()))
        fan_in = v[0].numel()
        alpha = v.abs().sum(dims, keepdim=True).div_(fan_in)
        scale = torch.exp2(torch.round(torch.log2(alpha.clamp_min(torch.finfo(v.dtype).tiny)))) \
            if power_of_two else alpha
        out = v + 0.0
        torch.copysign(scale, out, out=out)
        ctx.detach_alpha, ctx.fan_in = detach_alpha, fan_in
        ctx.save_for_backward(v, alpha, scale, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        v, alpha, scale, out = ctx.saved_tensors
        grad_v = torch.ops.aten.hardtanh_backward(grad, v, -1.0, 1.0).mul_(scale)
        if not ctx.detach_alpha:
            dims = tuple(range(1, v.dim()))
            nonzero = alpha > 0
            safe = torch.where(nonzero, scale, torch.ones_like(scale))
            # out / scale = sign(v); d|v|/dv = sign(v) off zero rows (autograd's sgn(0) = 0 on them);
            # d scale / d alpha = scale / alpha (identity through the rounding in the log domain).
            dot_sign = (grad * out).sum(dims, keepdim=True) / safe
            d_scale = torch.where(nonzero, scale / torch.where(nonzero, alpha, torch.ones_like(alpha)),
                                  torch.zeros_like(alpha))
            grad_v.addcmul_(out, dot_sign * d_scale / (safe * ctx.fan_in))
        return grad_v, None, None


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
    # (soft - soft) is exactly 0, so the output is exactly +-1 whatever the surrogate's range;
    # soft + (sign - soft) is not when soft is outside [-1, 1] or of the other sign (a sigmoid surrogate
    # gives -0.9999999999999999 at some x < 0).
    return (soft - soft.detach()) + sign(x)


def scaled_sign(v: torch.Tensor, scale: torch.Tensor, estimator: str = "clamp", nonnegative: bool = False
                ) -> torch.Tensor:
    r"""``scale * sign(v)`` for a weight ``v`` and a per-output-channel ``scale`` of shape (C_out, 1, ..., 1).

    Gradient for ``v``: ``"clamp"``, that of :math:`\mathrm{clamp}(v, -1, 1)` (inclusive bounds, not multiplied
    by the scale; the Bi-Real / ReActNet / A&B code); ``"ste"``, :math:`g \cdot scale \cdot 1\{|v| < 1\}`
    (sign-STE times the scale, XNOR-Net). Gradient for ``scale``: :math:`\sum g \cdot \mathrm{sign}(v)` over
    each row, so a learnable or non-detached scale trains. ``nonnegative=True`` promises ``scale >= 0``
    (e.g. a mean of absolute values), which saves a pass over the weight.
    """
    if estimator not in ("clamp", "ste"):
        raise ValueError(f"scaled_sign estimator must be 'clamp' or 'ste', got {estimator!r}")
    if scale.dim() != v.dim() or scale.shape[0] != v.shape[0]:
        raise ValueError(f"scale of shape {tuple(scale.shape)} does not broadcast per row over {tuple(v.shape)}")
    return _ScaledSign.apply(v, scale, estimator, bool(nonnegative))


def xnor_sign(v: torch.Tensor, detach_alpha: bool = False, power_of_two: bool = False) -> torch.Tensor:
    r"""XNOR-Net weights :math:`\alpha_o \mathrm{sign}(v)`, :math:`\alpha_o = \frac{1}{n}\|v_o\|_1` over each
    row's fan-in, with sign-STE and (unless ``detach_alpha``) the gradient through :math:`\alpha`.
    ``power_of_two`` rounds :math:`\alpha_o` to :math:`2^{\mathrm{round}(\log_2 \alpha_o)}`, gradient passed
    through the rounding. One fused autograd node: its backward costs four passes over the weight."""
    if v.dim() < 2:
        raise ValueError(f"xnor_sign expects a weight of 2 or more dimensions, got shape {tuple(v.shape)}")
    return _XNORSign.apply(v, bool(detach_alpha), bool(power_of_two))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    r"""round(x) with an identity gradient."""
    return _RoundSTE.apply(x)


def power_of_two(x: torch.Tensor) -> torch.Tensor:
    r"""Nearest power of two in the log domain, :math:`2^{\mathrm{round}(\log_2 x)}`, for ``x > 0``; the
    rounding passes the gradient through."""
    return torch.exp2(round_ste(torch.log2(x)))
