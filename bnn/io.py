r"""Writing files so that a crash or a full disk never leaves a half-written checkpoint behind."""
import os
import tempfile
from typing import Any, Union

import torch

__all__ = ["atomic_save"]


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    r"""``torch.save(obj, path)`` through a temporary file in the same folder, renamed over ``path`` only once
    it is complete: readers see the old file or the new one, never a truncated one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
