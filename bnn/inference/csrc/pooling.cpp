// Max and average 2-D pooling of contiguous float32 NCHW tensors, bit-identical to ATen's CPU kernels
// (aten/src/ATen/native/cpu/MaxPoolKernel.cpp cpu_max_pool, AvgPoolKernel.cpp cpu_avg_pool, the NCHW paths
// F.max_pool2d / F.avg_pool2d take on a contiguous input), several times faster: ATen scans every window
// element by element, one output at a time; here the outputs of a row are computed V at a time (AVX-512: 16,
// AVX2: 8, portable C++: 4), and max-pooling reduces every input row once, then the rows.
//
// What ATen does, replicated exactly:
// - output size: Pool.h pooling_output_shape (div_rtn; ceil_mode adds stride - 1, then drops the last window
//   if it would start in the right padding).
// - max: maxval = -inf; for the window's rows and columns in order (dilated, clipped to the image):
//   if (val > maxval || isnan(val)) maxval = val. So the FIRST maximum wins a tie (-0 vs +0 keeps the first),
//   the LAST NaN wins; an empty window gives -inf. See pooling_body.h for why the row-wise reduction is equal.
// - avg: the window is [oh*sh - ph, + kh) clipped to [.., H + ph) for pool_size, then to the image for the
//   sum; sum = 0, sum += x row by row; divide_factor = divisor_override, else pool_size (count_include_pad)
//   or the clipped size; output = 0 + sum / float(divide_factor) (ATen zeroes the output, then adds: a -0
//   quotient becomes +0). An empty clipped window leaves 0.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace bnn {

namespace {

struct MaxGeom {
  int64_t H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
};

struct AvgGeom {
  int64_t H, W, OH, OW, kh, kw, sh, sw, ph, pw;
  std::vector<int64_t> empty_columns;  // output columns whose window misses the image (ATen writes 0)
};

}  // namespace

namespace pool_portable {
// Plain C++ on 4 lanes: GCC / Clang generic vectors, which the compiler lowers to the baseline vector
// instructions (SSE2 on x86-64; this file is compiled without -mavx).
struct Ops {
  static constexpr int64_t V = 4;
  typedef float vec __attribute__((vector_size(16)));
  typedef int32_t mask __attribute__((vector_size(16)));
  static inline vec set1(float x) { return vec{x, x, x, x}; }
  static inline vec load(const float* p) {
    vec r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static inline vec load_even(const float* p) { return vec{p[0], p[2], p[4], p[6]}; }
  static inline vec gather(const float* p, int64_t s) { return vec{p[0], p[s], p[2 * s], p[3 * s]}; }
  static inline void store(float* p, vec x) { std::memcpy(p, &x, sizeof(x)); }
  static inline void store_n(float* p, vec x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) p[i] = x[i];
  }
  static inline vec max_combine(vec acc, vec x) {
    const mask take = (x > acc) | (x != x);  // x > acc || isnan(x)
    return take ? x : acc;
  }
  static inline vec add(vec a, vec b) { return a + b; }
  static inline vec div(vec a, vec b) { return a / b; }
};
#include "pooling_body.h"
}  // namespace pool_portable

#pragma GCC push_options
#pragma GCC target("avx2")
namespace pool_avx2 {
struct Ops {
  static constexpr int64_t V = 8;
  using vec = __m256;
  static inline vec set1(float v) { return _mm256_set1_ps(v); }
  static inline vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline vec load_even(const float* p) {  // p[0], p[2], ..., p[14]
    const __m256 t = _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static inline vec gather(const float* p, int64_t s) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(static_cast<int>(s)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, _mm256_castsi256_ps(_mm256_set1_epi32(-1)), 4);
  }
  static inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static inline void store_n(float* p, vec v, int64_t n) {  // the first n lanes
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(p, keep, v);
  }
  static inline vec max_combine(vec acc, vec v) {
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, acc, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_ps(acc, v, take);
  }
  static inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
};
#include "pooling_body.h"
}  // namespace pool_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
namespace pool_avx512 {
struct Ops {
  static constexpr int64_t V = 16;
  using vec = __m512;
  static inline vec set1(float v) { return _mm512_set1_ps(v); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec load_even(const float* p) {  // p[0], p[2], ..., p[30]
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p + 16));
  }
  static inline vec gather(const float* p, int64_t s) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(s)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), static_cast<__mmask16>(0xFFFF), idx, p, 4);
  }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline void store_n(float* p, vec v, int64_t n) {  // the first n lanes
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  static inline vec max_combine(vec acc, vec v) {
    const __mmask16 take = _mm512_cmp_ps_mask(v, acc, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(take, acc, v);
  }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
};
#include "pooling_body.h"
}  // namespace pool_avx512
#pragma GCC pop_options

namespace {

int64_t div_rtn(int64_t x, int64_t y) {
  int64_t q = x / y, r = x % y;
  if (r != 0 && ((r < 0) != (y < 0))) --q;
  return q;
}

// ATen's pooling_output_shape (Pool.h).
int64_t output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dilation, bool ceil_mode) {
  int64_t out = div_rtn(in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

void check_input(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4, name,
              ": expected a float32 NCHW CPU tensor, got ", x.scalar_type(), " of shape ", x.sizes());
  TORCH_CHECK(x.size(1) != 0 && x.size(2) != 0 && x.size(3) != 0, name, ": empty input of shape ", x.sizes());
}

void check_geometry(const char* name, int64_t k, int64_t s, int64_t p, int64_t d) {
  TORCH_CHECK(k > 0 && s > 0 && d > 0, name, ": kernel size, stride and dilation must be positive");
  TORCH_CHECK(p >= 0 && p <= k / 2 && p <= ((k - 1) * d + 1) / 2, name,
              ": pad should be at most half of kernel size, got pad=", p, ", kernel_size=", k);
}

// The code path that runs: AVX2's 8 lanes rather than AVX-512's 16 when an output row has 8 columns or fewer.
Isa path_for(int64_t isa, int64_t out_w) {
  const Isa path = capped_isa(isa);
  return path == Isa::avx512 && out_w <= 8 ? Isa::avx2 : path;
}

int64_t lanes(Isa isa) {
  return isa == Isa::avx512 ? 16 : isa == Isa::avx2 ? 8 : 4;
}

// Work items: planes (n, c), split into chunks of output rows when there are few planes for the threads.
struct Split {
  int64_t chunks, rows, items, grain;
};

Split split_work(int64_t planes, int64_t out_h, int64_t work_per_row) {
  Split s;
  const int64_t threads = at::get_num_threads();
  s.chunks = 1;
  if (threads > 1 && planes < 4 * threads) s.chunks = std::min(out_h, (4 * threads + planes - 1) / planes);
  s.rows = (out_h + s.chunks - 1) / s.chunks;
  s.chunks = (out_h + s.rows - 1) / s.rows;
  s.items = planes * s.chunks;
  s.grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, s.rows * work_per_row));
  return s;
}

}  // namespace

torch::Tensor max_pool2d_nchw(torch::Tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int64_t dh, int64_t dw, bool ceil_mode, int64_t isa) {
  check_input(x, "max_pool2d_nchw");
  check_geometry("max_pool2d_nchw", kh, sh, ph, dh);
  check_geometry("max_pool2d_nchw", kw, sw, pw, dw);
  x = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const MaxGeom g{H, W, output_size(H, kh, ph, sh, dh, ceil_mode), output_size(W, kw, pw, sw, dw, ceil_mode),
                  kh, kw, sh, sw, ph, pw, dh, dw};
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "max_pool2d_nchw: output size is too small for input ", x.sizes());
  auto y = torch::empty({N, C, g.OH, g.OW}, x.options());
  if (y.numel() == 0) return y;
  const Isa path = path_for(isa, g.OW);
  auto fn = path == Isa::avx512 ? pool_avx512::max_items
            : path == Isa::avx2 ? pool_avx2::max_items
                                : pool_portable::max_items;
  const Split s = split_work(N * C, g.OH, g.OW * kh + W * kw);
  const float* xd = x.data_ptr<float>();
  const float* xe = xd + x.numel();
  float* yd = y.data_ptr<float>();
  at::parallel_for(0, s.items, s.grain, [&](int64_t begin, int64_t end) {
    fn(xd, xe, yd, g, s.chunks, s.rows, begin, end);
  });
  return y;
}

torch::Tensor avg_pool2d_nchw(torch::Tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, bool ceil_mode, bool count_include_pad,
                              c10::optional<int64_t> divisor_override, int64_t isa) {
  check_input(x, "avg_pool2d_nchw");
  check_geometry("avg_pool2d_nchw", kh, sh, ph, 1);
  check_geometry("avg_pool2d_nchw", kw, sw, pw, 1);
  TORCH_CHECK(!divisor_override.has_value() || divisor_override.value() != 0, "divisor must be not zero");
  x = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  AvgGeom g{H, W, output_size(H, kh, ph, sh, 1, ceil_mode), output_size(W, kw, pw, sw, 1, ceil_mode),
            kh, kw, sh, sw, ph, pw, {}};
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "avg_pool2d_nchw: output size is too small for input ", x.sizes());
  auto y = torch::empty({N, C, g.OH, g.OW}, x.options());
  if (y.numel() == 0) return y;
  const Isa path = path_for(isa, g.OW);
  const int64_t V = lanes(path), owr = (g.OW + V - 1) / V * V;

  // The divide factors (the same for every plane), as ATen computes them: int64, converted to float by the
  // division sum / divide_factor.
  std::vector<int64_t> col_factor(g.OW);
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const int64_t c0 = ow * sw - pw, c1 = std::min(c0 + kw, W + pw);
    const int64_t cc0 = std::max<int64_t>(c0, 0), cc1 = std::min(c1, W);
    if (cc0 >= cc1) g.empty_columns.push_back(ow);
    col_factor[ow] = count_include_pad ? c1 - c0 : cc1 - cc0;
  }
  std::vector<float> divisor(g.OH * owr, 1.0f);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t r0 = oh * sh - ph, r1 = std::min(r0 + kh, H + ph);
    const int64_t row_factor = count_include_pad ? r1 - r0 : std::min(r1, H) - std::max<int64_t>(r0, 0);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t factor = divisor_override.has_value() ? divisor_override.value() : row_factor * col_factor[ow];
      divisor[oh * owr + ow] = static_cast<float>(factor);
    }
  }

  auto fn = path == Isa::avx512 ? pool_avx512::avg_items
            : path == Isa::avx2 ? pool_avx2::avg_items
                                : pool_portable::avg_items;
  const Split s = split_work(N * C, g.OH, g.OW * kh * kw + W);
  const float* xd = x.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  const float* xe = xd + x.numel();
  const float* dd = divisor.data();
  at::parallel_for(0, s.items, s.grain, [&](int64_t begin, int64_t end) {
    fn(xd, xe, yd, g, dd, s.chunks, s.rows, begin, end);
  });
  return y;
}

}  // namespace bnn
