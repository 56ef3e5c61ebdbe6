r"""The fast CPU kernels (``csrc/*.cpp``): built on first use with
``torch.utils.cpp_extension`` (ninja, cached in torch's extension folder), the code path chosen at run
time (AVX-512 VPOPCNTDQ, AVX2, portable C++), threads as ``torch.get_num_threads()``.

Without a working compiler the packed layers fall back to the PyTorch reference in
:mod:`bnn.inference.packing`, with one warning saying why. ``BNN_KERNELS=reference`` forces that fallback;
``BNN_KERNELS=portable|avx2|avx512`` caps the code path (tests compare them). A cached library is loaded only
if its digest is the one recorded when it last loaded: a damaged or half-written cache is rebuilt.
"""
import glob
import hashlib
import math
import os
import shutil
import sys
import threading
import warnings
from typing import Any, Dict, Optional, Tuple

import torch

from .packing import unpack_bits

__all__ = ["extension", "kernel_isa", "active", "conv_weight_layout", "ISA_NAMES", "ISA_CODES"]

ISA_NAMES = {0: "portable", 1: "avx2", 2: "avx512"}
ISA_CODES = {name: code for code, name in ISA_NAMES.items()}
_CSRC = os.path.join(os.path.dirname(__file__), "csrc")
_CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
_lock = threading.Lock()
_state = {"tried": False, "module": None}


def _ninja_on_path() -> None:
    # A virtual environment's bin/ is not on PATH when its python runs by full path: put the ninja that
    # pip installed (and this interpreter's bin/) in front, so that the build finds it.
    folders = [os.path.dirname(sys.executable)]
    try:
        import ninja
        folders.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    path = os.environ.get("PATH", "")
    missing = [f for f in folders if f and f not in path.split(os.pathsep)]
    if missing:
        os.environ["PATH"] = os.pathsep.join(missing + [path])


def _sources():
    return sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))


def _build_name() -> str:
    """The extension's name carries a digest of every file in csrc/ (headers included: torch only checks the
    .cpp files it compiles), the flags and the torch version, so that a changed source or another torch
    gets a build folder of its own instead of a stale library."""
    digest = hashlib.sha256(" ".join(_CFLAGS + [torch.__version__]).encode())
    for path in sorted(glob.glob(os.path.join(_CSRC, "*"))):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    return "bnn_kernels_" + digest.hexdigest()[:12]


def _build():
    import logging
    # torch logs "No CUDA runtime is found" when a CUDA build of torch imports cpp_extension on a CPU-only
    # machine: irrelevant to a CPU extension.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension
    _ninja_on_path()
    # -fopenmp: ATen's parallel_for is OpenMP in torch's builds; without it the kernels run on one thread.
    # The library links to libgomp.so.1, which resolves to the copy torch has loaded already.
    name = _build_name()
    kwargs = dict(sources=_sources(), extra_cflags=_CFLAGS, extra_include_paths=[_CSRC],
                  extra_ldflags=["-fopenmp"], verbose=False)
    folder = cpp_extension._get_build_directory(name, verbose=False)
    if not _library_intact(os.path.join(folder, name + ".so")):
        # changed since it loaded, or never loaded (a build cut short): a damaged library can kill the process
        # in the loader (SIGBUS) before Python sees an error, so it is not even tried
        shutil.rmtree(folder, ignore_errors=True)
    try:
        module = cpp_extension.load(name=name, **kwargs)
    except (ImportError, OSError):
        # built, but the library does not load: wipe the build folder and build again under the same name (a
        # library that failed to load leaves nothing loaded)
        shutil.rmtree(folder, ignore_errors=True)
        module = cpp_extension.load(name=name, **kwargs)
    _stamp(module.__file__)
    return module


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _library_intact(library: str) -> bool:
    """True when there is no library yet, or it is the one that loaded before (its digest, in the stamp file
    written after that load)."""
    if not os.path.exists(library):
        return True
    try:
        with open(library + ".sha256") as f:
            return f.read().strip() == _digest(library)
    except OSError:
        return False


def _stamp(library: str) -> None:
    """Record the digest of a library that loaded, through a temporary file renamed into place."""
    stamp = library + ".sha256"
    temporary = f"{stamp}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(_digest(library))
    os.replace(temporary, stamp)


def extension():
    """The compiled kernels, or None (reference fallback) after one warning."""
    if _setting() == "reference":
        return None
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["module"] = _build()
            except Exception as e:  # any build failure: say why, once, and run the reference kernels
                message = str(e).strip() or type(e).__name__
                warnings.warn("bnn: the fast binary kernels could not be built, so the (much slower) PyTorch "
                              f"reference runs instead. The compiler said:\n{message[-4000:]}", RuntimeWarning,
                              stacklevel=3)
                _state["module"] = None
            _state["tried"] = True
    return _state["module"]


def kernel_isa() -> Optional[int]:
    """The code path the kernels run (0 portable, 1 AVX2, 2 AVX-512), capped by ``BNN_KERNELS``; None
    when they are not available. (Memoized per setting: the packed layers ask at every call, through
    :func:`active`.)"""
    setting = _setting()
    if setting in _isa_by_setting:
        return _isa_by_setting[setting]
    ext = extension()
    if ext is None:
        return None  # not memoized: BNN_KERNELS=reference, or the build failed (extension() remembers that)
    best = int(ext.cpu_isa())
    cap = ISA_CODES.get(setting)
    _isa_by_setting[setting] = isa = best if cap is None else min(best, cap)
    return isa


_isa_by_setting: Dict[str, int] = {}


def _setting() -> str:
    """``BNN_KERNELS`` as set now, lower-case, "" when unset: read at every call of a packed layer, so that a
    change through ``os.environ`` applies at once. From the mapping behind ``os.environ`` when CPython has
    it: ``os.environ.get`` of an unset variable raises and catches a KeyError, which after a large kernel (its
    data evicting the interpreter's from the caches) added about 3 us to each layer call (32@112)."""
    if _ENVIRON_DATA is not None:
        raw = _ENVIRON_DATA.get(_SETTING_KEY)
        if raw is None:
            return ""
        return (raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw).lower()
    return os.environ.get("BNN_KERNELS", "").lower()


_ENVIRON_DATA = getattr(os.environ, "_data", None)
try:
    _SETTING_KEY = os.environ.encodekey("BNN_KERNELS")
except AttributeError:  # (not CPython's os._Environ: the public mapping instead)
    _ENVIRON_DATA = None


def active() -> Tuple[Any, Optional[int]]:
    """``(extension(), kernel_isa())`` with one read of ``BNN_KERNELS`` (a packed layer asks at every call),
    ``(None, None)`` when the reference runs."""
    isa = _isa_by_setting.get(_setting())
    if isa is None:
        isa = kernel_isa()
    return (_state["module"], isa) if isa is not None else (None, None)


def conv_weight_layout(weight_bits: torch.Tensor, out_channels: int, in_channels: int, kernel_size, groups: int
                       ) -> torch.Tensor:
    """Re-pack reference-layout weight words ``(C_out, words of C_in/G * kh * kw bits)`` into the kernels'
    ``[G, B, KH, KW, WG, 8]`` layout: B blocks of 8 output channels (C_out / G rounded up to 8, zero bits in the
    padding), each block's weights one contiguous stream, read front to back by the kernels."""
    kh, kw = kernel_size
    cin_g, cout_g = in_channels // groups, out_channels // groups
    signs = unpack_bits(weight_bits, cin_g * kh * kw).view(groups, cout_g, cin_g, kh, kw)
    wg = math.ceil(cin_g / 64)
    blocks = math.ceil(cout_g / 8)
    bits = torch.zeros(groups, blocks * 8, kh, kw, wg * 64, dtype=torch.bool)
    bits[:, :cout_g, :, :, :cin_g] = signs.permute(0, 1, 3, 4, 2)
    from .packing import pack_bits
    # (G, B, 8, KH, KW, WG, 64) -> (G, B, KH, KW, WG, 8, 64): 64 input channels per word
    words = pack_bits(bits.view(groups, blocks, 8, kh, kw, wg, 64).permute(0, 1, 3, 4, 5, 2, 6).contiguous())
    return words.squeeze(-1).contiguous()  # [G, B, KH, KW, WG, 8]
