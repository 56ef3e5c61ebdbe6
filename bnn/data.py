r"""Small embedded data for examples, the demo and tests: nothing is downloaded.

:func:`load_digits_split` gives scikit-learn's handwritten digits (1797 grayscale 8x8 images, 10 classes,
shipped with scikit-learn) as a fixed, stratified training / held-out split of standardized tensors.
"""
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["DigitsSplit", "load_digits_split"]


class DigitsSplit(NamedTuple):
    """Training and held-out tensors: images ``(N, channels, size, size)`` float32, labels int64."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0, test_size: float = 0.25, size: int = 8, channels: int = 1,
                      train_subset: Optional[int] = None,
                      device: Union[str, torch.device, None] = None) -> DigitsSplit:
    r"""scikit-learn's digits as a stratified training / held-out split, standardized with the training
    images' mean and standard deviation (one scalar each).

    Args:
        seed: seed of the split (the same seed gives the same split).
        test_size: fraction of the images held out (default 0.25: 1347 training, 450 held-out).
        size: side of the images; 8 is the data's own, larger sizes are bilinear upsampling (e.g. 32 for
            a model with a CIFAR stem).
        channels: 1, or 3 (the gray image repeated) for models built for RGB inputs.
        train_subset: keep only the first ``train_subset`` training images (quick smoke runs).
        device: where the tensors go.

    Returns:
        a :class:`DigitsSplit` ``(x_train, y_train, x_test, y_test)``.

    Example::

        >>> from bnn.data import load_digits_split
        >>> x_train, y_train, x_test, y_test = load_digits_split(seed=0)
        >>> tuple(x_train.shape), tuple(x_test.shape)
        ((1347, 1, 8, 8), (450, 1, 8, 8))
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn "
                          "(or pip install 'bnn[examples]')") from None
    if size < 1 or channels not in (1, 3):
        raise ValueError(f"size must be positive and channels 1 or 3, got size={size}, channels={channels}")
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=test_size, random_state=seed, stratify=digits.target)
    if train_subset is not None:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    x_train = torch.tensor(x_train, dtype=torch.float32).unsqueeze(1)
    x_test = torch.tensor(x_test, dtype=torch.float32).unsqueeze(1)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if size != x_train.shape[-1]:
        x_train, x_test = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                           for x in (x_train, x_test))
    if channels == 3:
        x_train, x_test = x_train.repeat(1, 3, 1, 1), x_test.repeat(1, 3, 1, 1)
    return DigitsSplit(x_train.contiguous().to(device), torch.tensor(y_train).to(device),
                       x_test.contiguous().to(device), torch.tensor(y_test).to(device))
