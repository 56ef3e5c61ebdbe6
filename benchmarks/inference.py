r"""Packed binary inference vs float PyTorch on this CPU, measured side by side in one process.

    python benchmarks/inference.py [--repeats 15] [--number 10] [--threads 1,2] [--batches 1,8] [--settle 0.01]
                                   [--skip-layers] [--skip-models]

1. Per layer: ReActNet-18 and ReActNet-A conv shapes, packed binary layer (threshold + pack + XNOR-popcount
   conv + scale, float in and out) vs ``F.conv2d`` in float32 of the same shape, and the layer as it runs
   between binary layers of a converted network (input bits handed over by the previous layer's epilogue,
   the next layer's bits written by its own); each contender runs ``--number`` times in a row per round
   (steady state, as inside a network run over and over). Also the packed binary linear layer (a
   classifier head and a wide hidden layer) vs ``F.linear``.
2. End to end: ``abbnn_reactnet18`` and ``abbnn_reactnet_a`` (ImageNet stem, 224x224, binarized by
   recipes/abbnn-pow2.yaml, converted) vs float torchvision resnet18 and mobilenet_v2, and ``reactnet18``
   (recipes/reactnet.yaml, with BatchNorm) vs resnet18: latency at batch 1, throughput at batch 8.
3. Memory: packed model file vs float32 parameters.
Figures are medians of repeats, the contenders interleaved, each in its steady state (``--settle``: in every
round, it first runs untimed for that long); ratios are float time / binary time.
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

import bnn
from bnn.inference import kernels
from bnn.inference.modules import PackedBinaryConv2d, PackedBinaryLinear
from bnn.inference.thresholds import ChannelThresholds
from bnn.timing import median_times

# (name, channels in, channels out, kernel, stride, spatial size of the input)
LAYERS = [
    ("reactnet18 3x3 64@56", 64, 64, 3, 1, 56),
    ("reactnet18 3x3 128@28", 128, 128, 3, 1, 28),
    ("reactnet18 3x3 256@14", 256, 256, 3, 1, 14),
    ("reactnet18 3x3 512@7", 512, 512, 3, 1, 7),
    ("reactnet18 1x1 64->128 s2@56", 64, 128, 1, 2, 56),
    ("reactnet18 1x1 256->512 s2@14", 256, 512, 1, 2, 14),
    ("reactnet_a 3x3 32@112", 32, 32, 3, 1, 112),
    ("reactnet_a 3x3 128@56", 128, 128, 3, 1, 56),
    ("reactnet_a 3x3 512@14", 512, 512, 3, 1, 14),
    ("reactnet_a 3x3 1024@7", 1024, 1024, 3, 1, 7),
    ("reactnet_a 1x1 128@56", 128, 128, 1, 1, 56),
    ("reactnet_a 1x1 512@14", 512, 512, 1, 1, 14),
    ("reactnet_a 1x1 1024@7", 1024, 1024, 1, 1, 7),
]


def packed_layer(cin, cout, k, stride):
    thresholds = ChannelThresholds(torch.randn(cin) * 0.1, torch.ones(cin, dtype=torch.int8))
    signs = torch.where(torch.randn(cout, cin, k, k) >= 0, 1.0, -1.0)
    pad = k // 2
    return PackedBinaryConv2d(thresholds, signs, (stride, stride), (pad, pad), (1, 1), 1,
                              scale=torch.rand(cout) + 0.5)


def in_network(layer, x):
    """The layer as it runs inside a converted network between binary layers, or None without the kernels:
    its input bits handed over by the previous layer's epilogue, and its epilogue writing the float output and
    the next binary layer's input bits (bits and float in, float and bits out)."""
    isa = kernels.kernel_isa()
    if isa is None:
        return None
    linked = copy.deepcopy(layer)
    linked.hand_bits_to(packed_layer(layer.out_channels, layer.out_channels, 3, 1))
    bits = kernels.extension().pack_input(x, layer.threshold, layer.direction, layer.groups, layer.stride[1], isa)
    return lambda: linked(x, packed=bits)


def bench_layers(args):
    print("\n== Per layer: packed binary conv vs torch float32 F.conv2d (same shape) ==")
    print("layer: threshold + pack + conv + scale, float in and out; in network: bits handed over by the previous "
          "layer in,\nfloat and the next layer's bits out")
    print(f"{'layer':<32} {'batch':>5} {'thr':>3} {'float ms':>9} {'layer ms':>9} {'speed-up':>9} "
          f"{'network ms':>10} {'speed-up':>9}")
    rows = []
    for name, cin, cout, k, stride, size in LAYERS:
        layer = packed_layer(cin, cout, k, stride)
        weight = torch.randn(cout, cin, k, k)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                x = torch.randn(batch, cin, size, size)
                contenders = {"float": lambda: F.conv2d(x, weight, stride=stride, padding=k // 2),
                              "binary": lambda: layer(x)}
                network = in_network(layer, x)
                if network is not None:
                    contenders["network"] = network
                t = median_times(contenders, args.repeats, number=args.number, settle=args.settle)
                ratio = t["float"] / t["binary"]
                in_net = t["float"] / t["network"] if network is not None else float("nan")
                rows.append((name, batch, threads, ratio, in_net))
                network_cols = (f"{t['network'] * 1e3:>10.3f} {in_net:>8.1f}x" if network is not None
                                else f"{'-':>10} {'-':>9}")
                print(f"{name:<32} {batch:>5} {threads:>3} {t['float'] * 1e3:>9.3f} {t['binary'] * 1e3:>9.3f} "
                      f"{ratio:>8.1f}x {network_cols}", flush=True)
    three = [r for r in rows if " 3x3 " in r[0]]
    for label, column in (("float in and out", 3), ("in network", 4)):
        print(f"3x3 binary layers ({label}): speed-up min {min(r[column] for r in three):.1f}x, "
              f"median {statistics.median(r[column] for r in three):.1f}x")
    return rows


# (name, features in, features out): a classifier head, and a wide hidden layer
LINEARS = [("linear 512->1000", 512, 1000), ("linear 4096->4096", 4096, 4096)]


def bench_linears(args):
    print("\n== Per layer: packed binary linear (float in and out) vs torch float32 F.linear ==")
    print(f"{'layer':<32} {'batch':>5} {'thr':>3} {'float ms':>9} {'binary ms':>9} {'speed-up':>9}")
    for name, cin, cout in LINEARS:
        g = torch.Generator().manual_seed(cin)
        layer = PackedBinaryLinear(ChannelThresholds(torch.randn(cin, generator=g) * 0.1, torch.ones(cin, dtype=torch.int8)),
                                   torch.where(torch.randn(cout, cin, generator=g) >= 0, 1.0, -1.0),
                                   scale=torch.rand(cout, generator=g) + 0.5)
        weight = torch.randn(cout, cin, generator=g)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                x = torch.randn(batch, cin, generator=g)
                t = median_times({"float": lambda: F.linear(x, weight), "binary": lambda: layer(x)}, args.repeats,
                                 number=args.number, settle=args.settle)
                print(f"{name:<32} {batch:>5} {threads:>3} {t['float'] * 1e3:>9.3f} {t['binary'] * 1e3:>9.3f} "
                      f"{t['float'] / t['binary']:>8.1f}x", flush=True)


def converted(name, recipe):
    model = bnn.models.create_model(name, num_classes=1000, stem="imagenet")
    chef = bnn.BinaryChef(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(len(chef)):
            model = chef.next(model)
    model.eval()
    return model, bnn.to_inference(model, torch.randn(1, 3, 224, 224))


def faults_per_call(fn, calls=2):
    """Minor page faults per call of ``fn``, from ``resource.getrusage`` (None where it is not available): at
    batch 8 they can be a large part of a forward (docs/benchmarks.md), and which forwards take them depends on
    what ran before in the process."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def bench_models(args):
    import torchvision
    recipes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes")
    available = set(bnn.models.list_models())
    # the A&B models under abbnn-pow2 (no multiplication), and ReActNet-18 as its paper trains it (BatchNorm)
    pairs = [("abbnn_reactnet18", "resnet18", "abbnn-pow2.yaml"), ("abbnn_reactnet_a", "mobilenet_v2", "abbnn-pow2.yaml"),
             ("reactnet18", "resnet18", "reactnet.yaml")]
    print("\n== End to end, 224x224: converted binary model vs float torchvision model ==")
    print(f"{'binary model':<20} {'float model':<14} {'thr':>3} {'latency b1 float/binary ms':>28} {'speed-up':>9} "
          f"{'throughput b8 float/binary img/s':>34} {'speed-up':>9} {'faults/b8 float/binary':>23}")
    for binary_name, float_name, recipe in pairs:
        if binary_name not in available:
            print(f"{binary_name}: not in bnn.models, skipped")
            continue
        fake, fast = converted(binary_name, os.path.join(recipes, recipe))
        reference = torchvision.models.get_model(float_name, weights=None).eval()
        with torch.no_grad():
            for threads in args.threads:
                torch.set_num_threads(threads)
                x1, x8 = torch.randn(1, 3, 224, 224), torch.randn(8, 3, 224, 224)
                t1 = median_times({"float": lambda: reference(x1), "binary": lambda: fast(x1)}, args.repeats,
                                  settle=args.settle)
                t8 = median_times({"float": lambda: reference(x8), "binary": lambda: fast(x8)}, args.repeats,
                                  settle=args.settle)
                faults = [faults_per_call(lambda: model(x8)) for model in (reference, fast)]
                faults_text = "n/a" if None in faults else f"{faults[0]:.0f} / {faults[1]:.0f}"
                print(f"{binary_name:<20} {float_name:<14} {threads:>3} "
                      f"{t1['float'] * 1e3:>13.1f} / {t1['binary'] * 1e3:<12.1f} {t1['float'] / t1['binary']:>8.1f}x "
                      f"{8 / t8['float']:>16.1f} / {8 / t8['binary']:<15.1f} {t8['float'] / t8['binary']:>8.1f}x "
                      f"{faults_text:>23}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.bnn")
            fast.save(path)
            size = os.path.getsize(path)
        float_bytes = 4 * sum(p.numel() for p in fake.parameters())
        print(f"{binary_name:<20} memory: packed file {size / 2**20:.2f} MiB, float32 parameters "
              f"{float_bytes / 2**20:.2f} MiB: {float_bytes / size:.1f}x smaller", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--number", type=int, default=10, help="runs of each layer per round (per-layer table)")
    p.add_argument("--settle", type=float, default=0.01,
                   help="seconds each contender runs untimed before its timed runs, in every round (its steady "
                        "state: the core runs slower for a few ms after another contender's float convolution)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes for the per-layer table")
    p.add_argument("--retain-memory", action="store_true",
                   help="call bnn.inference.retain_freed_memory() first: glibc keeps freed memory, so batch-8 "
                        "forwards take no page faults (for float and binary alike)")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-models", action="store_true")
    args = p.parse_args(argv)
    args.threads = [int(v) for v in args.threads.split(",")]
    args.batches = [int(v) for v in args.batches.split(",")]
    isa = kernels.kernel_isa()
    print(f"bnn kernels: {kernels.ISA_NAMES.get(isa, 'unavailable (PyTorch reference)')}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs")
    # glibc's settings for big blocks decide how many page faults each forward takes (see docs/benchmarks.md)
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    settings = [f"{k}={v}" for k, v in sorted(malloc.items())]
    if args.retain_memory:
        settings.append("bnn.inference.retain_freed_memory(): "
                        + ("applied" if bnn.inference.retain_freed_memory() else "not available here"))
    print("allocator settings: " + (", ".join(settings) or "glibc defaults"))
    if not args.skip_layers:
        bench_layers(args)
        bench_linears(args)
    if not args.skip_models:
        bench_models(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
