r"""``bnn demo``: the whole life of a binary network on scikit-learn's handwritten digits, in a few minutes
on a CPU, nothing downloaded.

float model -> the two steps of a recipe (A&B BNN's by default: activations binary first, then weights
too) -> held-out accuracy after each -> :func:`bnn.to_inference` -> the converted model's accuracy and a
check that its predictions are those of the trained model -> :func:`bnn.count_ops` / :func:`bnn.summary`
-> packed file size and measured speed next to the float model -> a PNG figure (training curves and the
per-layer operation census).

    bnn demo                                  # the digits CNN below and recipes/abbnn.yaml
    bnn demo --recipe abbnn-pow2 --epochs 8   # power-of-two scales: no multiplication outside stem/classifier
    bnn demo --model reactnet18               # a bnn.models architecture on 32x32 digits (much slower)

From Python: ``results = bnn.demo.run_demo()`` returns what it printed as a dict.
"""
import copy
import importlib.util
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import load_digits_split
from .engine import BinaryChef
from .engine.shipped import find_recipe
from .inference import to_inference
from .layers import PowerOfTwoRPReLU
from .profile import count_ops, summary
from .timing import median_times

__all__ = ["DigitsBlock", "DigitsNet", "run_demo", "DEFAULT_MODEL", "DEFAULT_RECIPE", "DEFAULT_EPOCHS"]

DEFAULT_MODEL = "digits_net"
DEFAULT_RECIPE = "abbnn"
DEFAULT_EPOCHS = 6
FLOAT_LR = 3e-3
BATCH_SIZE = 64


class DigitsBlock(nn.Module):
    r"""``x -> BatchNorm -> [sign] -> binary 3x3 conv -> + shortcut -> power-of-two RPReLU``.

    The BatchNorm feeds only the conv's sign, so in inference it folds into the per-channel thresholds;
    the real shortcut (identity, or a 2x2 average pool when strided) carries what the 1-bit conv loses;
    the power-of-two RPReLU (A&B BNN) is a shift in inference. The conv never sees a ReLU output (whose
    sign would be +1 everywhere). As a float model, the conv is a plain ``nn.Conv2d`` that a recipe
    binarizes."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.shortcut = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act = PowerOfTwoRPReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.norm(x)) + self.shortcut(x))


class DigitsNet(nn.Module):
    r"""The demo's model for 8x8 digits: a real 3x3 stem conv (with a bias, no normalization), six
    :class:`DigitsBlock` (8x8, 8x8, 4x4, 4x4, 2x2, 2x2), global average pooling and a real classifier.
    A recipe's ``_first_`` / ``_last_`` keep the stem and the classifier real and binarize the six 3x3
    convs. Converted after ``recipes/abbnn-pow2.yaml`` it has no multiplication outside the stem and the
    classifier (BatchNorms fold into thresholds, scales and slopes are powers of two: shifts)."""

    def __init__(self, channels: int = 32, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(DigitsBlock(channels, stride) for stride in (1, 1, 2, 1, 2, 1)))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _build(model: str) -> Tuple[nn.Module, int, int]:
    """The float model, and the side and channels of the images it takes."""
    if model == DEFAULT_MODEL:
        return DigitsNet(), 8, 1
    from . import models
    if model not in models.list_models():
        import difflib
        known = [DEFAULT_MODEL] + models.list_models()
        close = difflib.get_close_matches(str(model), known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {model!r}{hint}: the demo takes {DEFAULT_MODEL} (the default) or a "
                         f"bnn.models name: {', '.join(known[1:])}")
    return models.create_model(model, num_classes=10, stem="cifar"), 32, 3


class _Progress:
    """A tqdm bar on stderr (when tqdm is installed and stderr is a terminal) and lines on stdout."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=None,
                        dynamic_ncols=True) if tqdm is not None else None
        self.tqdm = tqdm

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def write(self, line: str) -> None:
        if self.tqdm is not None:
            self.tqdm.write(line, file=sys.stdout)
        else:
            print(line)
        sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def _train(model: nn.Module, data, stage: str, epochs: int, optimizer, scheduler, criterion,
           clip: Optional[Callable[[nn.Module], None]], history: List[Dict[str, Any]]) -> None:
    x, y = data.x_train, data.y_train
    batches = math.ceil(len(x) / BATCH_SIZE)
    progress = _Progress(epochs * batches, stage)
    try:
        for epoch in range(epochs):
            model.train()
            total = 0.0
            for idx in torch.randperm(len(x)).split(BATCH_SIZE):
                inputs = x[idx]
                loss = criterion(model(inputs), y[idx], inputs)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    clip(model)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                progress.update(loss.item())
            accuracy = _accuracy(model, data.x_test, data.y_test)
            history.append({"stage": stage, "epoch": epoch + 1, "loss": total / len(x), "accuracy": accuracy})
            progress.write(f"  {stage} epoch {epoch + 1}/{epochs}  loss {total / len(x):.3f}  "
                           f"held-out accuracy {accuracy:.3f}")
    finally:
        progress.close()


def _shown(path: str) -> str:
    """A recipe path as the user would type it: relative when under the working directory, else the
    file name of a shipped recipe, else as it is."""
    relative = os.path.relpath(path)
    if not relative.startswith(".."):
        return relative
    from .engine.shipped import shipped_recipes
    name = os.path.basename(path)
    return name if os.path.abspath(path) in map(os.path.abspath, shipped_recipes().values()) else path


def _compact(n: float) -> str:
    """1234 -> '1.2k', 1548288 -> '1.5M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def _figure(path: str, history: List[Dict[str, Any]], census: Dict[str, Any], title: str,
            inference_accuracy: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, ops_ax = fig.subplots(1, 3, width_ratios=[1, 1, 1.4])
    stages = list(dict.fromkeys(h["stage"] for h in history))
    colors = dict(zip(stages, ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]))
    start = 0
    for stage in stages:
        rows = [h for h in history if h["stage"] == stage]
        xs = list(range(start + 1, start + len(rows) + 1))
        loss_ax.plot(xs, [h["loss"] for h in rows], "o-", color=colors[stage], label=stage)
        acc_ax.plot(xs, [h["accuracy"] for h in rows], "o-", color=colors[stage], label=stage)
        for ax in (loss_ax, acc_ax):
            ax.axvline(start + 0.5, color="lightgray", lw=0.8, ls="--")
        start += len(rows)
    acc_ax.plot([start + 0.35], [inference_accuracy], "*", color="black", markersize=14, label="converted (packed)")
    acc_ax.axhline(0.9, color="tab:red", lw=0.8, ls=":", label="0.90")
    loss_ax.set(title="training loss per epoch", xlabel="epoch (float, then each recipe step)",
                ylabel="cross-entropy (training split)")
    low = min([h["accuracy"] for h in history] + [inference_accuracy])
    acc_ax.set(title="held-out accuracy per epoch", xlabel="epoch (float, then each recipe step)",
               ylabel="accuracy (held-out split)", ylim=(max(0.0, min(low, 0.85) - 0.02), 1.005))
    loss_ax.legend()
    acc_ax.legend(loc="best")

    # the census as a table: one row per layer, one column per kind of operation, colour = log10(count)
    kinds = ["binary_macs", "float_macs", "multiplications", "additions", "shifts", "comparisons"]
    layers = [r for r in census["layers"] if any(r.get(k) for k in kinds)]
    counts = [[r.get(k, 0) for k in kinds] for r in layers]
    shade = [[math.log10(v) if v else float("nan") for v in row] for row in counts]
    top = max([math.log10(v) for row in counts for v in row if v] + [1.0])
    image = ops_ax.imshow(shade, aspect="auto", cmap="YlGnBu", vmin=0, vmax=top)
    for i, row in enumerate(counts):
        for j, v in enumerate(row):
            if v:
                ops_ax.text(j, i, _compact(v), ha="center", va="center", fontsize=7,
                            color="white" if math.log10(v) > 0.6 * top else "black")
    real_ends = set(census.get("stem_and_classifier", []))
    ops_ax.set_yticks(range(len(layers)), [f"{r['name']} ({r['kind']})" + (" *" if r["name"] in real_ends else "")
                                           for r in layers], fontsize=7)
    ops_ax.set_xticks(range(len(kinds)), [f"{k.replace('_', ' ')}\n{_compact(census[k])}" for k in kinds],
                      fontsize=8)
    ops_ax.xaxis.tick_top()
    ops_ax.set_title("operation census of the converted model, per layer, one image\n(column heads: totals; "
                     "* real stem / classifier, whose multiplications the total leaves out)", fontsize=9)
    fig.colorbar(image, ax=ops_ax, label="log10(count)", shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def run_demo(model: str = DEFAULT_MODEL, recipe: str = DEFAULT_RECIPE, epochs: int = DEFAULT_EPOCHS,
             out: str = "bnn-demo.bnn", figure: str = "bnn-demo.png", seed: int = 0, threads: int = 1,
             smoke: bool = False) -> Dict[str, Any]:
    r"""Run the demo, printing as it goes; return the results.

    Args:
        model: ``"digits_net"`` (:class:`DigitsNet`, 8x8 inputs) or a :func:`bnn.models.list_models` name
            (built with ``stem="cifar"``, on digits upsampled to 32x32 RGB: much slower).
        recipe: a recipe file, or the name of a shipped one (``"abbnn"``, ``"abbnn-pow2"``, ...).
        epochs: epochs of the float training and of each recipe step.
        out: the packed inference model file to write.
        figure: the PNG to write.
        seed: seed of the split and of the training.
        threads: torch CPU threads while the demo runs (1 is fastest for the small default model,
            especially when other processes share the cores).
        smoke: 1 epoch per stage on 256 training images and few timing runs: checks that it all works.

    Returns:
        a dict: ``accuracy`` (float, each step, binary, inference), ``identical`` (the converted model
        predicts exactly as the trained one), ``history`` (per-epoch loss and accuracy), ``bops``,
        ``flops``, ``ops``, ``float_flops``, ``file_bytes``, ``float_bytes``, ``latency`` (seconds),
        ``census``, ``out``, ``figure``, ``seconds``.

    Raises:
        ValueError: an unknown model, a bad recipe, ``epochs < 1``.
        FileNotFoundError: no such recipe.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    missing = [name for name, module in (("scikit-learn", "sklearn"), ("matplotlib", "matplotlib"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"bnn demo needs {' and '.join(missing)}: pip install 'bnn[examples]'")
    recipe_path = find_recipe(recipe)
    chef = BinaryChef(recipe_path)  # a bad recipe fails here, before any training
    torch.manual_seed(seed)  # the model's initial weights, then the training
    float_model, size, channels = _build(model)
    if smoke:
        epochs = 1
    for folder in {os.path.dirname(os.path.abspath(p)) for p in (out, figure)}:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such directory: {folder}")

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(float_model, model, chef, recipe_path, size, channels, epochs, out, figure, seed, threads,
                    smoke, started)
    finally:
        torch.set_num_threads(previous_threads)


def _run(float_model: nn.Module, model_name: str, chef: BinaryChef, recipe_path: str, size: int, channels: int,
         epochs: int, out: str, figure: str, seed: int, threads: int, smoke: bool, started: float
         ) -> Dict[str, Any]:
    data = load_digits_split(seed=seed, size=size, channels=channels, train_subset=256 if smoke else None)
    print(f"bnn demo: {model_name} on scikit-learn's digits ({len(data.x_train)} training / {len(data.x_test)} "
          f"held-out images, {channels}x{size}x{size}), recipe {_shown(recipe_path)} "
          f"(steps {', '.join(st.name for st in chef.steps)}), {epochs} epoch(s) per stage, {threads} CPU thread(s)", flush=True)
    if size > 8:
        print("  (a bnn.models architecture on 32x32 images: minutes per epoch on a CPU; the default "
              f"{DEFAULT_MODEL} takes seconds)", flush=True)
    history: List[Dict[str, Any]] = []
    accuracy: Dict[str, float] = {}
    steps_per_epoch = math.ceil(len(data.x_train) / BATCH_SIZE)

    # 1. the float model: Adam, learning rate decayed linearly to 0
    optimizer = torch.optim.Adam(float_model.parameters(), lr=FLOAT_LR)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
    _train(float_model, data, "float", epochs, optimizer, scheduler,
           lambda logits, targets, inputs: F.cross_entropy(logits, targets), None, history)
    accuracy["float"] = _accuracy(float_model, data.x_test, data.y_test)
    print(f"float accuracy: {accuracy['float']:.2f}", flush=True)

    # 2. the recipe's steps, each from the weights the step before left; the float model is the teacher
    #    of steps that distil
    teacher = copy.deepcopy(float_model).eval()
    model = copy.deepcopy(float_model)
    for _ in range(len(chef)):
        with warnings.catch_warnings():
            # a recipe written for the papers' models names layers (e.g. "$downsample$") this one lacks
            warnings.filterwarnings("ignore", message=r".*the pattern .* match")
            model = chef.next(model)
        stage = chef.step.name
        optimizer = chef.optimizer(model)
        scheduler = chef.scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs)
        _train(model, data, stage, epochs, optimizer, scheduler, chef.criterion(teacher=teacher),
               chef.clip_gradients, history)
        accuracy[stage] = _accuracy(model, data.x_test, data.y_test)
        print(f"{stage} accuracy: {accuracy[stage]:.2f}", flush=True)
    model.eval()
    accuracy["binary"] = _accuracy(model, data.x_test, data.y_test)
    print(f"binary accuracy: {accuracy['binary']:.2f}", flush=True)

    # 3. the multiplication-free inference model; its predictions must be the trained model's
    one = data.x_test[:1]
    fast = to_inference(model, one)
    with torch.no_grad():
        reference, converted = model(data.x_test), fast(data.x_test)
    accuracy["inference"] = (converted.argmax(1) == data.y_test).float().mean().item()
    identical = bool(converted.argmax(1).equal(reference.argmax(1)))
    worst = (converted - reference).abs().max().item()
    print(f"inference accuracy: {accuracy['inference']:.2f}")
    print(f"identical predictions: {'yes' if identical else 'NO'} ({len(data.x_test)} held-out images; "
          f"largest logit difference {worst:.1e})", flush=True)

    # 4. operations: the binarized model's summary table, BOPs and FLOPs next to the float model's
    table = summary(model, one)
    print()
    print(table)
    report, float_report = table.report, count_ops(float_model, one)
    print(f"per image: BOPs {report.bops:,}  FLOPs {report.flops:,}  OPs {report.ops:,.0f} "
          f"(OPs = FLOPs + BOPs/64); float model FLOPs {float_report.flops:,}: "
          f"{float_report.flops / max(report.ops, 1):.1f}x fewer OPs")
    census = fast.op_census(one, per_layer=True)
    print("op census of the converted model, per image: " + ", ".join(
        f"{k.replace('_', ' ')} {census[k]:,}" for k in
        ("binary_macs", "float_macs", "multiplications", "additions", "shifts", "comparisons"))
        + f" (multiplications: not counting the real {' and '.join(census['stem_and_classifier']) or 'ends'})")

    # 5. the packed file next to the float32 parameters
    fast.save(out)
    file_bytes = os.path.getsize(out)
    float_bytes = 4 * sum(p.numel() for p in float_model.parameters())
    print(f"wrote {out}: {file_bytes:,} bytes packed; float32 parameters {float_bytes:,} bytes: "
          f"{float_bytes / file_bytes:.1f}x smaller")

    # 6. speed, measured here side by side: float model vs converted model
    float_model.eval()
    repeats = 5 if smoke else 30
    latency: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        for label, x in (("batch 1", one), (f"batch {len(data.x_test)}", data.x_test)):
            latency[label] = median_times({"float": lambda: float_model(x), "binary": lambda: fast(x)},
                                           repeats if label == "batch 1" else max(3, repeats // 3))
    from .inference import kernels
    isa = kernels.kernel_isa()
    kernel = kernels.ISA_NAMES.get(isa, "PyTorch reference") if isa is not None else "PyTorch reference"
    print(f"speed, median of {repeats} interleaved runs, {threads} thread(s), {kernel} kernels:")
    for label, t in latency.items():
        ratio = t["float"] / t["binary"]
        print(f"  {label:<10} float {t['float'] * 1e3:8.2f} ms   converted {t['binary'] * 1e3:8.2f} ms   "
              f"{ratio:.2f}x ({'about the same' if 0.95 <= ratio <= 1.05 else 'faster' if ratio > 1 else 'slower'})")
    if size <= 8:
        print("  (at 8x8 pixels and 32 channels the layers are too small for bit-packing to pay: thresholding "
              "and packing the activations, and the per-layer overhead, cost about what the float convs do; "
              "`bnn bench` measures larger layers)")

    # 7. the figure
    _figure(figure, history, census,
            f"bnn demo: {model_name}, {os.path.basename(recipe_path)}; held-out accuracy float "
            f"{accuracy['float']:.3f}, binary {accuracy['binary']:.3f}, converted {accuracy['inference']:.3f}",
            accuracy["inference"])
    print(f"wrote {figure}: training curves and the per-layer op census")
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.0f} s")
    return {"accuracy": accuracy, "identical": identical, "history": history, "bops": report.bops,
            "flops": report.flops, "ops": report.ops, "float_flops": float_report.flops, "file_bytes": file_bytes,
            "float_bytes": float_bytes, "latency": latency, "census": census, "out": out, "figure": figure,
            "seconds": seconds}
