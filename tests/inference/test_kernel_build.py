"""How the C++ kernels get built (``bnn.inference.kernels``): a fresh build, the recovery from a corrupt cached
library, a failing compiler, ``BNN_KERNELS=reference``, and the build name's digest.

Every test runs Python in a subprocess, so that the process-wide state of kernels.py (one build attempt per
process) and torch's cache of loaded extensions start empty, with ``TORCH_EXTENSIONS_DIR`` in a temporary
folder (the user's extension cache is never touched). Only ``test_fresh_build_then_corrupt_library_is_rebuilt``
compiles the real kernels (twice); the others compile nothing or one tiny broken file.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "bnn" / "inference" / "csrc"
BUILD_TIMEOUT = 400  # seconds for one subprocess that compiles the real kernels (~40-70 s on 2 cores)
QUICK_TIMEOUT = 120

# Defines ``check_conv()``: a PackedBinaryConv2d (two input words, scale and bias) on whatever path
# kernels.py picks, against (1) a float convolution of the ±1 tensors computed here, independently of bnn's
# packing code, and (2) the same layer under BNN_KERNELS=reference; and ``report(**fields)`` printing the
# result as the last line of stdout.
PRELUDE = r'''
import json, os, sys, warnings
import torch
import torch.nn.functional as F
from bnn.inference import kernels
from bnn.inference.modules import PackedBinaryConv2d
from bnn.inference.thresholds import ChannelThresholds

def check_conv():
    g = torch.Generator().manual_seed(0)
    cin, cout = 70, 13
    thresholds = ChannelThresholds(torch.randn(cin, generator=g) * 0.3,
                                   torch.randint(-1, 2, (cin,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(cout, cin, 3, 3, generator=g) >= 0, 1.0, -1.0)
    scale, bias = torch.rand(cout, generator=g) + 0.5, torch.randn(cout, generator=g)
    layer = PackedBinaryConv2d(thresholds, signs, (1, 1), (0, 0), (1, 1), 1, scale=scale, bias=bias)
    x = torch.randn(2, cin, 6, 7, generator=g)
    plus_minus = torch.where(thresholds.bits(x, 1), 1.0, -1.0)
    expected = F.conv2d(plus_minus, signs) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    isa = kernels.kernel_isa()
    got = layer(x)
    before = os.environ.get("BNN_KERNELS")
    os.environ["BNN_KERNELS"] = "reference"
    try:
        reference = layer(x)
    finally:
        if before is None:
            del os.environ["BNN_KERNELS"]
        else:
            os.environ["BNN_KERNELS"] = before
    return dict(isa=isa, shape=list(got.shape), equals_float_conv=bool(torch.equal(got, expected)),
                equals_reference=bool(torch.equal(got, reference)),
                max_error=float((got - expected).abs().max()))

def report(**fields):
    print(json.dumps(fields))
'''


def run_python(code: str, extensions_dir: Path, timeout: float, **env_vars) -> dict:
    """Run ``PRELUDE + code`` in a fresh interpreter with TORCH_EXTENSIONS_DIR=extensions_dir (and no
    BNN_KERNELS unless given); return the JSON it printed last."""
    env = dict(os.environ)
    env.pop("BNN_KERNELS", None)
    env["TORCH_EXTENSIONS_DIR"] = str(extensions_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(env_vars)
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output:\n{proc.stderr}"
    return json.loads(lines[-1])


BUILD_AND_REPORT = r'''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ext = kernels.extension()
    conv = check_conv() if ext is not None else None
report(name=kernels._build_name(),
       module=None if ext is None else ext.__name__,
       file=None if ext is None else os.path.realpath(ext.__file__),
       cpu_isa=None if ext is None else int(ext.cpu_isa()),
       same_module_again=kernels.extension() is ext,
       conv=conv,
       warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
'''


def test_fresh_build_then_corrupt_library_is_rebuilt(tmp_path):
    """THE SLOW TEST (two full builds of the real kernels, ~1-2.5 min on 2 cores).

    1. A fresh build into an empty extension folder: the module is ``bnn_kernels_<digest>`` in
       ``<TORCH_EXTENSIONS_DIR>/<name>/``, ``cpu_isa()`` is 0..2 and a packed convolution on the kernels is
       exact.
    2. The built library is cut short after its ELF header (a damaged cache; the loader would die of SIGBUS
       on it): a new process must notice that its digest is not the one recorded when it loaded, wipe the
       folder and build again under the same name (a real second build), without any warning, and the
       rebuilt kernels must be exact too.
    """
    ext_dir = tmp_path / "extensions"

    first = run_python(BUILD_AND_REPORT, ext_dir, BUILD_TIMEOUT)
    name = first["name"]
    assert re.fullmatch(r"bnn_kernels_[0-9a-f]{12}", name), name
    assert first["warnings"] == [], first["warnings"]
    assert first["module"] == name, first
    library = ext_dir / name / f"{name}.so"
    assert first["file"] == os.path.realpath(library), first
    assert first["cpu_isa"] in (0, 1, 2), first
    assert first["same_module_again"], first
    assert first["conv"]["isa"] == first["cpu_isa"], first
    assert first["conv"]["shape"] == [2, 13, 4, 5], first
    assert first["conv"]["equals_float_conv"] and first["conv"]["equals_reference"], first
    assert sorted(p.name for p in ext_dir.iterdir()) == [name], "the build went elsewhere"

    # Damage the cached library: keep its first half (its mtime is now newer than the objects, so ninja
    # sees nothing to do and, unchecked, the broken file would reach the loader).
    stamp = library.with_name(library.name + ".sha256")
    assert stamp.read_text() == hashlib.sha256(library.read_bytes()).hexdigest()
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])

    second = run_python(BUILD_AND_REPORT, ext_dir, BUILD_TIMEOUT)
    rebuilt = name
    assert second["name"] == name, "csrc/ changed during the test"
    assert second["warnings"] == [], second["warnings"]
    # torch names a library built twice in one process <name>_v1: the folder is what must be reused
    assert re.fullmatch(re.escape(rebuilt) + r"(_v\d+)?", second["module"]), second
    assert second["file"] == os.path.realpath(ext_dir / rebuilt / f"{second['module']}.so"), second
    assert second["cpu_isa"] == first["cpu_isa"], second
    assert second["same_module_again"], second
    assert second["conv"]["isa"] == second["cpu_isa"], second
    assert second["conv"]["equals_float_conv"] and second["conv"]["equals_reference"], second
    # the broken build was replaced in place; nothing else was built
    assert sorted(p.name for p in ext_dir.iterdir()) == [rebuilt]


def test_build_failure_warns_once_with_the_compiler_message_and_falls_back(tmp_path):
    """A csrc/ whose only source does not compile (fails in a second, no real build): extension() is None,
    exactly one RuntimeWarning carries the compiler's error, and the packed layer still computes the right
    result on the PyTorch reference."""
    broken = tmp_path / "csrc"
    broken.mkdir()
    (broken / "broken.cpp").write_text("// deliberately broken\n"
                                       "int bnn_test_broken() { return bnn_undefined_identifier_xq7; }\n")
    ext_dir = tmp_path / "extensions"
    code = r'''
kernels._CSRC = os.environ["BNN_TEST_CSRC"]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = kernels.extension()
    again = kernels.extension()
    isa = kernels.kernel_isa()
    conv = check_conv()
report(name=kernels._build_name(), sources=[os.path.basename(s) for s in kernels._sources()],
       first=repr(first), again=repr(again), isa=isa, conv=conv,
       warnings=[[w.category.__name__, str(w.message)] for w in caught])
'''
    out = run_python(code, ext_dir, QUICK_TIMEOUT, BNN_TEST_CSRC=str(broken))
    assert out["sources"] == ["broken.cpp"], out
    assert out["first"] == "None" and out["again"] == "None" and out["isa"] is None, out
    assert len(out["warnings"]) == 1, out["warnings"]
    category, message = out["warnings"][0]
    assert category == "RuntimeWarning"
    assert "could not be built" in message and "reference" in message, message
    assert "bnn_undefined_identifier_xq7" in message, message  # the compiler's own words
    assert out["conv"]["isa"] is None, out
    assert out["conv"]["equals_float_conv"] and out["conv"]["equals_reference"], out
    # the attempt happened in the temporary extension folder, under the broken sources' own name
    assert [p.name for p in ext_dir.iterdir()] == [out["name"]]


def test_reference_mode_builds_nothing(tmp_path):
    """BNN_KERNELS=reference: no kernels, no build attempt, no folder, no warning, right results."""
    ext_dir = tmp_path / "extensions"
    code = r'''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    isa = kernels.kernel_isa()
    ext = kernels.extension()
    conv = check_conv()
report(isa=isa, ext=repr(ext), tried=kernels._state["tried"], conv=conv,
       cpp_extension_imported="torch.utils.cpp_extension" in sys.modules,
       warnings=[str(w.message) for w in caught])
'''
    out = run_python(code, ext_dir, QUICK_TIMEOUT, BNN_KERNELS="reference")
    assert out["isa"] is None and out["ext"] == "None", out
    assert out["tried"] is False, "a build was attempted"
    assert out["cpp_extension_imported"] is False, out
    assert out["warnings"] == [], out
    assert out["conv"]["isa"] is None and out["conv"]["equals_float_conv"], out
    assert not ext_dir.exists(), list(ext_dir.rglob("*"))


def test_build_name_follows_every_csrc_file(tmp_path):
    """The build name is a digest of csrc/'s contents (headers too), not of its location: a copy has the
    same name, an edited header or .cpp or an extra file a new one, and restoring the content restores it."""
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy)
    headers = sorted(p.name for p in copy.glob("*.h"))
    cpps = sorted(p.name for p in copy.glob("*.cpp"))
    assert headers and cpps
    code = r'''
from pathlib import Path
copy = Path(os.environ["BNN_TEST_CSRC"])
header, cpp = copy / os.environ["BNN_TEST_HEADER"], copy / os.environ["BNN_TEST_CPP"]
names = {"original": kernels._build_name()}
kernels._CSRC = str(copy)
names["copy"] = kernels._build_name()
text = header.read_text()
header.write_text(text + "\n// a comment changes the digest\n")
names["header_edited"] = kernels._build_name()
header.write_text(text)
names["header_restored"] = kernels._build_name()
text = cpp.read_text()
cpp.write_text(text.replace("\n", "\n\n", 1))
names["cpp_edited"] = kernels._build_name()
cpp.write_text(text)
(copy / "extra.h").write_text("#pragma once\n")
names["file_added"] = kernels._build_name()
report(names=names, sources=[os.path.basename(s) for s in kernels._sources()])
'''
    out = run_python(code, tmp_path / "extensions", QUICK_TIMEOUT, BNN_TEST_CSRC=str(copy),
                     BNN_TEST_HEADER=headers[0], BNN_TEST_CPP=cpps[0])
    names = out["names"]
    assert all(re.fullmatch(r"bnn_kernels_[0-9a-f]{12}", n) for n in names.values()), names
    assert names["copy"] == names["original"] == names["header_restored"], names
    assert len({names["original"], names["header_edited"], names["cpp_edited"], names["file_added"]}) == 4, names
    assert out["sources"] == cpps  # the patched folder is the one compiled
    assert not (tmp_path / "extensions").exists()
