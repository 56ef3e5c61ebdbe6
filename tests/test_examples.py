"""Every example runs on the embedded data with --smoke, as a user would start it (its own process)."""
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_quickstart(tmp_path):
    out = run([str(ROOT / "examples" / "quickstart.py"), "--smoke"], tmp_path)
    assert "float accuracy:" in out and "binary accuracy:" in out


def test_train_writes_a_resumable_checkpoint(tmp_path):
    out = run([str(ROOT / "examples" / "train.py"), "--smoke", "--checkpoint-dir", "ckpt",
               "--recipe", str(ROOT / "recipes" / "abbnn.yaml")], tmp_path)
    assert "step1 epoch 1/1: accuracy:" in out and "step2 epoch 1/1: accuracy:" in out
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert checkpoint["chef"]["current_step"] == 2 and checkpoint["epoch"] == 0
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name != "last.pt"]  # no temporary file left
    run([str(ROOT / "examples" / "train.py"), "--smoke", "--checkpoint-dir", "ckpt", "--resume", "ckpt/last.pt",
         "--recipe", str(ROOT / "recipes" / "abbnn.yaml")], tmp_path)


def test_convert_and_benchmark(tmp_path):
    out = run([str(ROOT / "examples" / "convert_and_benchmark.py"), "--smoke"], tmp_path)
    assert "identical outputs: yes" in out and "reloaded file identical: yes" in out
    assert "multiplications 0," in out  # abbnn-pow2: nothing left outside the stem and classifier
