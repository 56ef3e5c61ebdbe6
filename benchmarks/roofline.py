r"""How close each 3x3 binary conv layer is to this CPU's floor: the peak throughput of the two inner loops that
bound a convolution, measured side by side in one process with the layers they bound.

    python benchmarks/roofline.py [--repeats 9] [--number 10] [--settle 0.01] [--iterations 20000000]
                                  [--batch 1] [--threads 1]

1. Peaks (a tiny C++ extension, AVX-512 VPOPCNTDQ, timed inside C++): the binary inner loop, "triples" (xor +
   popcount + add on 512 bits: 512 binary multiply-accumulates), and the float one, 512-bit FMAs (16 MACs);
   both with 24 independent accumulators (3 pixel vectors x 8 channels) in registers, inputs loaded from L1,
   weights broadcast, as in the packed kernels. Best of ``--repeats`` runs of ``--iterations`` iterations. On a
   CPU with AMX, its int8 tile products too (report_amx: why the kernels do not use them).
2. Per layer: ReActNet-18 and ReActNet-A 3x3 shapes, ``F.conv2d`` in float32 vs the packed binary layer as it
   runs in a converted network (input bits in, float and the next layer's bits out), medians of interleaved
   rounds as in benchmarks/inference.py; then each one's time against the floor its peak sets for its MACs.
"""
import argparse
import logging
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from bnn.inference import kernels
from bnn.timing import median_times

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference import LAYERS, in_network, packed_layer  # noqa: E402

# One body for both loops: 3 vectors of inputs (their row varies with the iteration, so they are loaded in the
# loop) times 8 broadcast weights, into 24 accumulators (29 of the 32 registers with the inputs, a weight and a
# temporary). The sums go to a volatile sink, so that the loops are not optimized away.
SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdint>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,fma")))

namespace {
constexpr int kPixels = 3, kChannels = 8, kRows = 16;  // 16 rows of 64 bytes: in L1
volatile double sink;

struct Binary {  // a triple: xor, popcount, add on 512 bits
  using Vec = __m512i;
  using Scalar = uint32_t;
  static Scalar value(int64_t k, bool) { return static_cast<uint32_t>(k * 0x9E3779B97F4A7C15ull >> 32); }
  AVX512 static Vec step(Vec acc, const Scalar* x, Scalar w) {
    return _mm512_add_epi32(acc, _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_load_si512(x), _mm512_set1_epi32(w))));
  }
  AVX512 static double sum(Vec acc) { return _mm512_reduce_add_epi32(acc); }
};

struct Float {  // inputs in [0.5, 1), weights ~1e-3: the sums stay normal floats (no subnormal or infinite operands)
  using Vec = __m512;
  using Scalar = float;
  static Scalar value(int64_t k, bool weight) { return (weight ? 1e-3f : 0.5f) * (1.0f + (k % 97) / 97.0f); }
  AVX512 static Vec step(Vec acc, const Scalar* x, Scalar w) {
    return _mm512_fmadd_ps(_mm512_load_ps(x), _mm512_set1_ps(w), acc);
  }
  AVX512 static double sum(Vec acc) { return _mm512_reduce_add_ps(acc); }
};

template <class Kind>
AVX512 double timed_loop(int64_t iterations) {
  using Scalar = typename Kind::Scalar;
  // static, not on the stack: then any stack access in the loop is a spilled accumulator
  alignas(64) static Scalar inputs[kRows][16];
  static Scalar weights[kRows];
  for (int r = 0; r < kRows; ++r) {  // values from the argument: nothing for the compiler to fold
    weights[r] = Kind::value(r + iterations, true);
    for (int l = 0; l < 16; ++l) inputs[r][l] = Kind::value(r * 16 + l + iterations, false);
  }
  typename Kind::Vec acc[kPixels][kChannels];
#pragma GCC unroll 8
  for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
    for (int c = 0; c < kChannels; ++c) acc[p][c] = typename Kind::Vec{};
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) {
    const Scalar* x = inputs[i & (kRows / 2 - 1)];
    const Scalar* w = weights + (i & (kRows / 2 - 1));
#pragma GCC unroll 8
    for (int c = 0; c < kChannels; ++c)
#pragma GCC unroll 8
      for (int p = 0; p < kPixels; ++p) acc[p][c] = Kind::step(acc[p][c], x + p * 16, w[c]);
  }
  const auto stop = std::chrono::steady_clock::now();
  double total = 0;
#pragma GCC unroll 8
  for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
    for (int c = 0; c < kChannels; ++c) total += Kind::sum(acc[p][c]);
  sink = total;
  return std::chrono::duration<double>(stop - start).count();
}
}  // namespace

double binary_triples(int64_t iterations) { return timed_loop<Binary>(iterations); }
double float_fmas(int64_t iterations) { return timed_loop<Float>(iterations); }

// AMX (compilers from GCC 11 and clang 12 on, Linux on x86-64): whether this CPU has int8 tiles and Linux lets
// this process use them (ARCH_REQ_XCOMP_PERM for XTILEDATA).
#if defined(__linux__) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define BNN_AMX_PROBE
#endif
bool amx_available() {
#ifdef BNN_AMX_PROBE
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
         __builtin_cpu_supports("avx512vpopcntdq") && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

#ifdef BNN_AMX_PROBE
#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
// Seconds of `iterations` steps of the int8 tile products (TDPBSSD: 16 x 16 x 64 MACs each) a convolution's
// register block of 2 x 2 tiles would run: 4 products into 4 accumulator tiles per step. loads: each step also
// loads its 4 input tiles (2 of weights from a 36 KB stream, 2 of input rows 14 KB apart), as a convolution must;
// vector_work: each step also runs work for the vector units of the size of an epilogue's (16 pixels x 8
// channels: 24 binary triples and 8 stores of 64 bytes).
AMX double amx_steps(int64_t iterations, bool loads, bool vector_work) {
  alignas(64) static float out[16 * 1024];
  struct alignas(64) Config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } config{};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  constexpr int64_t kPlane = 14 * 1024, kWeightTiles = 36;
  static int8_t weights[kWeightTiles * 1024], input[16 * kPlane + 4096];
  for (int64_t i = 0; i < kWeightTiles * 1024; ++i) weights[i] = static_cast<int8_t>((i + iterations) % 3 - 1);
  for (int64_t i = 0; i < 16 * kPlane + 4096; ++i) input[i] = static_cast<int8_t>((i * 7 + iterations) % 3 - 1);
  alignas(64) static uint32_t x[kRows][16];
  for (int r = 0; r < kRows; ++r)
    for (int l = 0; l < 16; ++l) x[r][l] = static_cast<uint32_t>((r * 16 + l + iterations) * 0x9E3779B97F4A7C15ull >> 32);
  __m512i acc[kPixels][kChannels];
  for (int p = 0; p < kPixels; ++p)
    for (int c = 0; c < kChannels; ++c) acc[p][c] = _mm512_setzero_si512();
  _tile_loadconfig(&config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, weights, 64);
  _tile_loadd(5, weights + 1024, 64);
  _tile_loadd(6, input, kPlane);
  _tile_loadd(7, input + 64, kPlane);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) {
    const int8_t* a = weights + (i % (kWeightTiles / 2)) * 2048;
    const int8_t* b = input + (i % 64) * 64;
    if (loads) {
      _tile_loadd(4, a, 64);
      _tile_loadd(6, b, kPlane);
    }
    _tile_dpbssd(0, 4, 6);
    if (loads) _tile_loadd(7, b + 64, kPlane);
    _tile_dpbssd(1, 4, 7);
    if (loads) _tile_loadd(5, a + 1024, 64);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
    if (vector_work) {
#pragma GCC unroll 8
      for (int c = 0; c < kChannels; ++c)
        _mm512_store_ps(out + ((i * kChannels + c) * 16 & (16 * 1024 - 1)), _mm512_set1_ps(static_cast<float>(c)));
      const uint32_t* xi = x[i & (kRows / 2 - 1)];
#pragma GCC unroll 8
      for (int c = 0; c < kChannels; ++c)
#pragma GCC unroll 8
        for (int p = 0; p < kPixels; ++p)
          acc[p][c] = _mm512_add_epi32(
              acc[p][c], _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_load_si512(xi + p * 16),
                                                              _mm512_set1_epi32(static_cast<int>(xi[c])))));
    }
  }
  alignas(64) int32_t sums[4][256];
  _tile_stored(0, sums[0], 64);
  _tile_stored(1, sums[1], 64);
  _tile_stored(2, sums[2], 64);
  _tile_stored(3, sums[3], 64);
  __asm__ volatile("" ::: "memory");  // (the tile stores' asm does not say that it writes memory)
  const auto stop = std::chrono::steady_clock::now();
  _tile_release();
  double total = sums[0][0] + sums[1][5] + sums[2][10] + sums[3][255] + out[iterations & 1023];
  for (int p = 0; p < kPixels; ++p)
    for (int c = 0; c < kChannels; ++c) total += _mm512_reduce_add_epi32(acc[p][c]);
  sink = total;
  return std::chrono::duration<double>(stop - start).count();
}
#else
double amx_steps(int64_t, bool, bool) { return -1.0; }
#endif
"""


def build_peaks():
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines
    from torch.utils import cpp_extension
    kernels._ninja_on_path()
    return cpp_extension.load_inline("bnn_roofline", cpp_sources=SOURCE, functions=["binary_triples", "float_fmas", "amx_available", "amx_steps"],
                                     extra_cflags=["-O3"], verbose=False)


def peak_rates(peaks, iterations, repeats):
    """Binary and float MACs per second, from the best of ``repeats`` interleaved runs (other processes only slow
    a loop down), after a short untimed run of each; and the seconds of every run."""
    loops = {"binary": (peaks.binary_triples, 512), "float": (peaks.float_fmas, 16)}
    seconds = {name: [] for name in loops}
    for loop, _ in loops.values():
        loop(iterations // 10)
    for _ in range(repeats):
        for name, (loop, _) in loops.items():
            seconds[name].append(loop(iterations))
    return {name: 24 * iterations * macs / min(seconds[name]) for name, (_, macs) in loops.items()}, seconds


def report_amx(peaks, iterations, repeats, triple_ns):
    """On a CPU with AMX int8 tiles: their products' peak against the triple's, alone and as a convolution would
    run them. Why bnn does not use them (docs/benchmarks.md): with the tile loads of a convolution the products run
    well below their peak, and an epilogue's work on the vector units hardly overlaps with them."""
    if not peaks.amx_available():
        print("AMX int8 tiles: not on this CPU (or not allowed by its OS)")
        return
    steps = max(1, iterations // 10)
    runs = {"alone": (False, False), "loads": (True, False), "vector": (True, True), "vector only": None}
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, flags in runs.items():
            if flags is None:  # the vector work alone: its triples and stores, without the tiles
                continue
            seconds[name].append(peaks.amx_steps(steps, *flags))
    step_ns = {name: min(t) / steps * 1e9 for name, t in seconds.items() if t}
    triple_rate = 512 / triple_ns
    for name, label in (("alone", "products alone"), ("loads", "with a convolution's 4 tile loads per 4 products")):
        rate = 16 * 16 * 64 / (step_ns[name] / 4)
        print(f"AMX int8 tile product (16x16x64 MACs), {label}: {step_ns[name] / 4:.2f} ns, {rate:.0f} GMAC/s "
              f"({rate / triple_rate:.2f}x the triple's binary MACs/s)")
    added = step_ns["vector"] - step_ns["loads"]
    print(f"AMX step (4 products, 4 tile loads) with an epilogue's vector work beside it (24 triples, 8 stores): "
          f"{step_ns['vector']:.1f} ns against {step_ns['loads']:.1f} ns without; the work adds {added:.1f} ns "
          f"(its 24 triples alone take {24 * triple_ns:.1f} ns)")


def bench_layers(args, rates):
    print(f"\n== 3x3 layers, batch {args.batch}, {args.threads} thread(s): time vs the floor of its MACs at peak ==")
    print("float, binary: ms per call (F.conv2d fp32; packed layer in network: bits in, float and next bits out)\n"
          "speed-up: float / binary; ceiling: float / dot floor, the speed-up if the binary layer did nothing but\n"
          "its XNOR-popcount at peak (dot floor: MACs / peak binary MACs/s); float eff, binary eff: floor / time\n"
          "(float floor: MACs / peak float MACs/s); rest: binary - dot floor (epilogue, packing, memory, calls);\n"
          "out B/kMAC: float output bytes (c*s*s*4) per 1000 MACs, high for the output-heavy layers")
    print(f"{'layer':<24} {'float ms':>9} {'binary ms':>9} {'speed-up':>9} {'ceiling':>8} {'float eff':>9} "
          f"{'binary eff':>10} {'dot floor':>9} {'rest ms':>8} {'out B/kMAC':>10}")
    rows = []
    for name, c, _, k, _, s in (layer for layer in LAYERS if layer[3] == 3):
        layer = packed_layer(c, c, k, 1)
        x, weight = torch.randn(args.batch, c, s, s), torch.randn(c, c, k, k)
        t = median_times({"float": lambda: F.conv2d(x, weight, padding=1), "binary": in_network(layer, x)},
                         args.repeats, number=args.number, settle=args.settle)
        macs = args.batch * c * c * k * k * s * s
        dot_floor = macs / rates["binary"]
        row = dict(name=name, speedup=t["float"] / t["binary"], ceiling=t["float"] / dot_floor,
                   float_eff=macs / rates["float"] / t["float"], binary_eff=dot_floor / t["binary"],
                   rest=t["binary"] - dot_floor, binary=t["binary"])
        rows.append(row)
        print(f"{name:<24} {t['float'] * 1e3:>9.3f} {t['binary'] * 1e3:>9.3f} {row['speedup']:>8.1f}x "
              f"{row['ceiling']:>7.1f}x {row['float_eff']:>9.0%} {row['binary_eff']:>10.0%} {dot_floor * 1e3:>9.3f} "
              f"{row['rest'] * 1e3:>8.3f} {args.batch * c * s * s * 4 / macs * 1e3:>10.2f}", flush=True)
    worst = min(rows, key=lambda r: r["speedup"])
    print(f"lowest speed-up: {worst['name']}, {worst['speedup']:.1f}x of a {worst['ceiling']:.1f}x ceiling; "
          f"its rest is {worst['rest'] / worst['binary']:.0%} of its time")
    print(f"median over the layers: speed-up {statistics.median(r['speedup'] for r in rows):.1f}x, ceiling "
          f"{statistics.median(r['ceiling'] for r in rows):.1f}x, binary efficiency "
          f"{statistics.median(r['binary_eff'] for r in rows):.0%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9, help="rounds (layers: median; peak loops: best)")
    p.add_argument("--number", type=int, default=10, help="runs of each layer per round")
    p.add_argument("--settle", type=float, default=0.01,
                   help="seconds each contender runs untimed before its timed runs, in every round")
    p.add_argument("--iterations", type=int, default=20_000_000,
                   help="iterations (24 triples or FMAs each) per run of a peak loop: ~0.2 s for the binary one")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    isa = kernels.kernel_isa()
    if isa != 2:
        print(f"the roofline needs AVX-512 VPOPCNTDQ (bnn kernels: {kernels.ISA_NAMES.get(isa, 'unavailable')}): "
              "nothing measured")
        return 0
    torch.set_num_threads(args.threads)
    peaks = build_peaks()
    rates, seconds = peak_rates(peaks, args.iterations, args.repeats)
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; peak loops on one core, best of {args.repeats} x "
          f"{args.iterations} iterations of 24")
    for name, op, macs in (("binary", "triple (xor + popcount + add, 512 bits)", 512), ("float", "FMA (512 bits)", 16)):
        best, median = (f(seconds[name]) / (24 * args.iterations) * 1e9 for f in (min, statistics.median))
        print(f"{name:<6} {op:<40} {best:.3f} ns (median {median:.3f}): {macs:>3} MACs each, "
              f"{rates[name] / 1e9:7.1f} GMAC/s")
    print(f"peak binary / float MACs per second: {rates['binary'] / rates['float']:.1f}x")
    report_amx(peaks, args.iterations, args.repeats, min(seconds["binary"]) / (24 * args.iterations) * 1e9)
    bench_layers(args, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
