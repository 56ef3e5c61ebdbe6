r"""The pooling kernels (bnn.inference.pooling) vs PyTorch's CPU pooling on float32 NCHW tensors, measured side by
side in one process: a ResNet-18's stem max-pool and its downsample shortcuts' average pools at 224x224.

    python benchmarks/pooling.py [--repeats 50] [--threads 1] [--batches 1,8]

Figures are medians of interleaved repeats (bnn.timing.median_times); speed-up = torch time / fast time. For the
max-pool, the channels-last round trip (the previous workaround: two copies around PyTorch's channels-last
kernel) is timed too.
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from bnn.inference import kernels
from bnn.inference.pooling import FastAvgPool2d, FastMaxPool2d
from bnn.timing import median_times

CASES = [
    ("MaxPool2d(3, 2, 1)", nn.MaxPool2d(3, 2, 1), 64, 112),
    ("AvgPool2d(2, 2)", nn.AvgPool2d(2, 2), 64, 56),
    ("AvgPool2d(2, 2)", nn.AvgPool2d(2, 2), 128, 28),
    ("AvgPool2d(2, 2)", nn.AvgPool2d(2, 2), 256, 14),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    isa = kernels.kernel_isa()
    if isa is None:
        raise SystemExit("the kernels are not built (or BNN_KERNELS=reference): nothing to compare")
    print(f"code path {kernels.ISA_NAMES[isa]}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'layer':<20} {'input':<20} {'torch ms':>9} {'fast ms':>8} {'speed-up':>8} {'chan-last ms':>12}")
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, pool, channels, size in CASES:
            x = torch.randn(batch, channels, size, size)
            fast = (FastMaxPool2d if isinstance(pool, nn.MaxPool2d) else FastAvgPool2d).from_module(pool)
            out, expected = fast(x), pool(x)
            assert torch.equal(out.view(torch.int32), expected.view(torch.int32)), name
            contenders = {"torch": lambda: pool(x), "fast": lambda: fast(x)}
            if isinstance(pool, nn.MaxPool2d):
                contenders["channels-last"] = lambda: F.max_pool2d(
                    x.contiguous(memory_format=torch.channels_last), pool.kernel_size, pool.stride, pool.padding,
                    pool.dilation, pool.ceil_mode).contiguous()
            with torch.no_grad():
                t = median_times(contenders, repeats=args.repeats, warmup=3)
            last = f"{t['channels-last'] * 1e3:12.3f}" if "channels-last" in t else f"{'':>12}"
            shape = "x".join(map(str, x.shape))
            print(f"{name:<20} {shape:<20} {t['torch'] * 1e3:9.3f} {t['fast'] * 1e3:8.3f} "
                  f"{t['torch'] / t['fast']:7.1f}x {last}")


if __name__ == "__main__":
    main()
