r"""`bnn demo` end to end (smoke size), the `bnn` command's arguments and errors, the shipped recipes and the
digits loader."""
import os
import re
import subprocess
import sys

import pytest
import torch

import bnn
from bnn import cli
from bnn.data import load_digits_split
from bnn.engine.shipped import find_recipe, shipped_recipes

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def run(argv):
    """bnn.cli.main's exit code, argparse's SystemExit included."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_demo_smoke_runs_the_whole_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["demo", "--smoke"]) == 0
    out = capsys.readouterr().out
    printed = {}
    for stage in ("float", "step1", "step2", "binary", "inference"):
        match = re.search(rf"^{stage} accuracy: (\d\.\d\d)$", out, re.MULTILINE)
        assert match, f"no '{stage} accuracy: 0.xx' line in:\n{out}"
        printed[stage] = float(match.group(1))
    assert printed["inference"] == printed["binary"]
    assert re.search(r"^identical predictions: yes", out, re.MULTILINE)
    assert "BOPs" in out and "FLOPs" in out and "BinaryConv2d" in out  # summary table and counts
    assert "smaller" in out and "converted" in out  # packed size, measured speed
    assert (tmp_path / "bnn-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved file is the converted model: it loads and scores what the demo printed
    fast = bnn.load_inference(str(tmp_path / "bnn-demo.bnn"))
    data = load_digits_split(seed=0, train_subset=256)  # --smoke's split (standardized by those 256 images)
    accuracy = (fast(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert f"{accuracy:.2f}" == f"{printed['inference']:.2f}"


def test_run_demo_pow2_recipe_explicit_paths(tmp_path):
    from bnn.demo import run_demo
    out, figure = tmp_path / "sub" / "m.bnn", tmp_path / "sub" / "f.png"
    out.parent.mkdir()
    results = run_demo(recipe=find_recipe("abbnn-pow2"), out=str(out), figure=str(figure), smoke=True, seed=1)
    assert results["identical"]
    assert out.is_file() and figure.is_file()
    assert set(results["accuracy"]) == {"float", "step1", "step2", "binary", "inference"}
    assert [h["stage"] for h in results["history"]] == ["float", "step1", "step2"]
    assert results["bops"] > 0 and results["flops"] > 0 and results["float_flops"] > results["ops"]
    assert results["census"]["binary_macs"] == results["bops"]
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("argv, message", [
    (["demo", "--model", "resnet1"], "unknown model 'resnet1'"),
    (["demo", "--recipe", "no-such-recipe.yaml"], "no such recipe file: no-such-recipe.yaml"),
    (["demo", "--out", "no/such/folder/m.bnn"], "no such directory"),
])
def test_demo_bad_arguments_fail_clearly(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("bnn demo: error: ") and message in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_demo_bad_recipe_file_names_the_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("step1:\n  pre_activation: {name: NoSuchBinarizer}\n"
                                       "  post_activation: {name: Identity}\n  weight: {name: Identity}\n")
    assert run(["demo", "--recipe", "bad.yaml"]) == 1
    err = capsys.readouterr().err
    assert "bnn demo: error: bad.yaml" in err and "NoSuchBinarizer" in err


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_demo_epochs_must_be_positive(capsys, value):
    assert run(["demo", "--epochs", value]) == 2
    assert "--epochs: must be a positive integer" in capsys.readouterr().err


def test_help_of_every_command(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "ops", "convert", "bench"):
        assert command in out
    for command in ("demo", "ops", "convert", "bench"):
        assert run([command, "--help"]) == 0
        assert f"usage: bnn {command}" in capsys.readouterr().out
    assert run([]) == 2
    assert run(["nonsense"]) == 2
    assert run(["demo", "--smoke", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_console_entry_exit_code():
    result = subprocess.run([sys.executable, "-m", "bnn.cli", "demo", "--epochs", "0"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "positive integer" in result.stderr


def test_bench_forwards_arguments(tmp_path, monkeypatch, capsys):
    (tmp_path / "inference.py").write_text("def main(argv=None):\n    print('got', argv)\n    return 3\n")
    monkeypatch.setattr(cli, "_benchmarks_folder", lambda: str(tmp_path))
    assert run(["bench", "--", "--repeats", "5"]) == 3
    assert "got ['--repeats', '5']" in capsys.readouterr().out
    assert run(["bench", "--repeats", "5", "--skip-models"]) == 3
    assert "got ['--repeats', '5', '--skip-models']" in capsys.readouterr().out


def test_bench_passes_help_to_the_script(capsys):
    if not os.path.isfile(os.path.join(cli._benchmarks_folder(), "inference.py")):
        pytest.skip("no source checkout")
    assert run(["bench", "--", "--help"]) == 0
    assert "--skip-models" in capsys.readouterr().out


def test_bench_without_checkout_says_where_benchmarks_are(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_benchmarks_folder", lambda: str(tmp_path / "missing"))
    assert run(["bench"]) == 1
    assert "benchmarks ship with the source checkout" in capsys.readouterr().err


def test_shipped_recipes_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = shipped_recipes()
    assert {"abbnn", "abbnn-pow2"} <= set(shipped)
    for name in ("abbnn", "abbnn.yaml", "recipes/abbnn.yaml"):
        assert os.path.samefile(find_recipe(name), shipped["abbnn"])
    (tmp_path / "abbnn.yaml").write_text("# mine\n")
    assert find_recipe("abbnn.yaml") == "abbnn.yaml"  # a file that exists wins
    with pytest.raises(FileNotFoundError, match="shipped recipes, usable by name: .*abbnn-pow2"):
        find_recipe("elsewhere/abbnn.yaml")


def test_load_digits_split():
    a = load_digits_split(seed=0)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert a.y_train.dtype == torch.int64 and set(a.y_test.tolist()) == set(range(10))
    assert abs(a.x_train.mean().item()) < 1e-4 and abs(a.x_train.std().item() - 1) < 1e-4
    b = load_digits_split(seed=0)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_test, load_digits_split(seed=1).x_test)
    big = load_digits_split(seed=0, size=32, channels=3, train_subset=100)
    assert big.x_train.shape == (100, 3, 32, 32) and big.x_test.shape == (450, 3, 32, 32)
    with pytest.raises(ValueError):
        load_digits_split(channels=2)
