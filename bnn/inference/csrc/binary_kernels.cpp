// Packed binary convolution on the CPU: XNOR-popcount over 64-bit words, three code paths chosen at run
// time (AVX-512 with VPOPCNTDQ, AVX2, portable C++), threads from ATen's pool (torch.get_num_threads()).
//
// Layouts (int64 words, bit i of a word = channel 64 * word + i of the group, 1 = +1):
//   packed input  [N, H, W, G, WG]            WG = ceil(C_in / G / 64)
//   packed weight [G, KH, KW, WG, COB]        COB = C_out / G rounded up to 8, zero bits in padding
// A tap outside the input (zero padding) is skipped: it contributes 0, as F.conv2d's zero padding does to
// the fake-binarized model. The sum over the valid taps is n_valid - 2 * popcount(a xor w), n_valid =
// valid taps * C_in / G; zero bits pad both operands, so the padding of a word never counts.
// Compiled with -ffp-contract=off: the epilogue rounds like the torch ops it replaces (multiply, then add).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <vector>

namespace {

struct ConvShape {
  int64_t n, h, w, groups, wg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cout, cout_g, cob, cin_g;
};

inline int64_t popcount_portable(uint64_t v) { return __builtin_popcountll(v); }

// The taps of one output pixel that fall inside the input (zero padding is skipped), as input pixel and
// weight tap offsets, in words. Plain loops rather than a callback: a lambda would not inherit the SIMD
// target attribute of the function that calls it.
inline int64_t valid_taps(const ConvShape& s, int64_t n, int64_t oh, int64_t ow, int64_t g,
                          int64_t* in_offsets, int64_t* w_offsets) {
  int64_t count = 0;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh * s.sh - s.ph + i * s.dh;
    if (ih < 0 || ih >= s.h) continue;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t iw = ow * s.sw - s.pw + j * s.dw;
      if (iw < 0 || iw >= s.w) continue;
      in_offsets[count] = ((n * s.h + ih) * s.w + iw) * s.groups * s.wg + g * s.wg;
      w_offsets[count] = (((g * s.kh + i) * s.kw + j) * s.wg) * s.cob;
      ++count;
    }
  }
  return count;
}

// Scale and bias of one output value, rounded like the torch ops it replaces (multiply, then add).
inline float epilogue_value(int64_t dot, int64_t co, const float* scale, const float* bias) {
  float v = static_cast<float>(dot);
  if (scale) v = v * scale[co];
  if (bias) v = v + bias[co];
  return v;
}

// Output channels are computed a block at a time for a whole output row, then each channel's row is
// written contiguously (a channel-strided write per value would miss the cache at every value).
inline float* out_row(const ConvShape& s, float* out, int64_t n, int64_t co, int64_t oh) {
  return out + ((n * s.cout + co) * s.ho + oh) * s.wo;
}

void conv_portable(const ConvShape& s, const uint64_t* in, const uint64_t* wt, const float* scale,
                   const float* bias, float* out, int64_t row_begin, int64_t row_end) {
  std::vector<int64_t> acc(s.cob), in_off(s.kh * s.kw), w_off(s.kh * s.kw);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.ho, oh = row % s.ho;
    for (int64_t g = 0; g < s.groups; ++g) {
      for (int64_t ow = 0; ow < s.wo; ++ow) {
        std::fill(acc.begin(), acc.end(), 0);
        const int64_t taps = valid_taps(s, n, oh, ow, g, in_off.data(), w_off.data());
        for (int64_t t = 0; t < taps; ++t) {
          const uint64_t* a = in + in_off[t];
          const uint64_t* w = wt + w_off[t];
          for (int64_t k = 0; k < s.wg; ++k)
            for (int64_t c = 0; c < s.cout_g; ++c) acc[c] += popcount_portable(a[k] ^ w[k * s.cob + c]);
        }
        for (int64_t c = 0; c < s.cout_g; ++c) {
          const int64_t co = g * s.cout_g + c;
          out_row(s, out, n, co, oh)[ow] = epilogue_value(taps * s.cin_g - 2 * acc[c], co, scale, bias);
        }
      }
    }
  }
}

__attribute__((target("avx2,popcnt")))
inline __m256i popcount_avx2(__m256i v) {
  // Mula's nibble lookup: popcount of each byte, then sums of 8 bytes per 64-bit lane.
  const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(lookup, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

// The SIMD paths block output channels: 4 vectors of accumulators (16 or 32 output channels) stay in
// registers over all taps and words of one output pixel, then a tail of single vectors.
// The SIMD paths block output channels: 4 vectors of accumulators (16 or 32 output channels) stay in
// registers over all taps and words of one output pixel; a block is computed for a whole output row
// into a small tile, then written out channel by channel.
// The SIMD paths block output channels: 4 vectors of accumulators (16 or 32 output channels) stay in
// registers over all taps and words of one output pixel. The taps of a whole output row are found once;
// a block is computed for the whole row into a small int32 tile, then the epilogue runs over each
// channel's row (a contiguous, vectorizable loop) and writes it out.
#define BNN_CONV_SIMD(NAME, TARGET, VEC, LANES, ZERO, SET1, LOADU, XOR, POPCNT, ADD, STORE)                 \
  __attribute__((target(TARGET)))                                                                          \
  void NAME(const ConvShape& s, const uint64_t* in, const uint64_t* wt, const float* scale,                \
            const float* bias, float* out, int64_t row_begin, int64_t row_end) {                           \
    const int64_t ktaps = s.kh * s.kw;                                                                    \
    std::vector<int64_t> in_off(s.wo * ktaps), w_off(s.wo * ktaps), taps(s.wo);                           \
    std::vector<int32_t> dots(4 * LANES * s.wo);                                                          \
    alignas(64) int64_t lanes[4 * LANES];                                                                 \
    const int64_t blocks = s.cob / LANES;                                                                 \
    for (int64_t row = row_begin; row < row_end; ++row) {                                                 \
      const int64_t n = row / s.ho, oh = row % s.ho;                                                      \
      for (int64_t g = 0; g < s.groups; ++g) {                                                            \
        for (int64_t ow = 0; ow < s.wo; ++ow)                                                             \
          taps[ow] = valid_taps(s, n, oh, ow, g, &in_off[ow * ktaps], &w_off[ow * ktaps]);                \
        for (int64_t b = 0; b < blocks; b += 4) {                                                         \
          const int64_t nb = blocks - b < 4 ? blocks - b : 4;                                             \
          for (int64_t ow = 0; ow < s.wo; ++ow) {                                                         \
            const int64_t* io = &in_off[ow * ktaps];                                                      \
            const int64_t* wo_ = &w_off[ow * ktaps];                                                      \
            VEC a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO();                                       \
            for (int64_t t = 0; t < taps[ow]; ++t) {                                                      \
              const uint64_t* a = in + io[t];                                                             \
              const uint64_t* w = wt + wo_[t] + b * LANES;                                                \
              for (int64_t k = 0; k < s.wg; ++k) {                                                        \
                const VEC x = SET1(static_cast<long long>(a[k]));                                         \
                const uint64_t* wk = w + k * s.cob;                                                       \
                a0 = ADD(a0, POPCNT(XOR(x, LOADU(wk))));                                                  \
                if (nb > 1) a1 = ADD(a1, POPCNT(XOR(x, LOADU(wk + LANES))));                              \
                if (nb > 2) a2 = ADD(a2, POPCNT(XOR(x, LOADU(wk + 2 * LANES))));                          \
                if (nb > 3) a3 = ADD(a3, POPCNT(XOR(x, LOADU(wk + 3 * LANES))));                          \
              }                                                                                           \
            }                                                                                             \
            STORE(lanes, a0);                                                                             \
            STORE(lanes + LANES, a1);                                                                     \
            STORE(lanes + 2 * LANES, a2);                                                                 \
            STORE(lanes + 3 * LANES, a3);                                                                 \
            const int64_t n_valid = taps[ow] * s.cin_g;                                                   \
            for (int64_t l = 0; l < nb * LANES; ++l)                                                      \
              dots[l * s.wo + ow] = static_cast<int32_t>(n_valid - 2 * lanes[l]);                          \
          }                                                                                               \
          for (int64_t l = 0; l < nb * LANES && b * LANES + l < s.cout_g; ++l) {                          \
            const int64_t co = g * s.cout_g + b * LANES + l;                                              \
            write_row(out_row(s, out, n, co, oh), dots.data() + l * s.wo, s.wo, co, scale, bias);         \
          }                                                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  }

// The epilogue over one output row: float(dot) (* scale) (+ bias), each variant its own loop so that it
// vectorizes, and rounds exactly as the torch ops it replaces (no fused multiply-add: -ffp-contract=off).
#define BNN_WRITE_ROW(NAME, TARGET)                                                                        \
  __attribute__((target(TARGET)))                                                                          \
  inline void NAME(float* dst, const int32_t* src, int64_t n, int64_t co, const float* scale,              \
                   const float* bias) {                                                                    \
    if (scale && bias) {                                                                                  \
      const float sv = scale[co], bv = bias[co];                                                          \
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * sv + bv;                      \
    } else if (scale) {                                                                                   \
      const float sv = scale[co];                                                                         \
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * sv;                           \
    } else if (bias) {                                                                                    \
      const float bv = bias[co];                                                                          \
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) + bv;                           \
    } else {                                                                                              \
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);                                \
    }                                                                                                     \
  }

__attribute__((target("avx2,popcnt"))) inline __m256i avx2_loadu(const uint64_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
__attribute__((target("avx2,popcnt"))) inline void avx2_store(int64_t* p, __m256i v) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(p), v);
}
__attribute__((target("avx512f,avx512vpopcntdq"))) inline __m512i avx512_loadu(const uint64_t* p) {
  return _mm512_loadu_si512(p);
}
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void avx512_store(int64_t* p, __m512i v) {
  _mm512_store_si512(p, v);
}

BNN_WRITE_ROW(write_row_avx2, "avx2,popcnt")
BNN_WRITE_ROW(write_row_avx512, "avx512f,avx512vpopcntdq")
#define write_row write_row_avx2
BNN_CONV_SIMD(conv_avx2, "avx2,popcnt", __m256i, 4, _mm256_setzero_si256, _mm256_set1_epi64x, avx2_loadu,
              _mm256_xor_si256, popcount_avx2, _mm256_add_epi64, avx2_store)
#undef write_row
#define write_row write_row_avx512
BNN_CONV_SIMD(conv_avx512, "avx512f,avx512vpopcntdq", __m512i, 8, _mm512_setzero_si512, _mm512_set1_epi64,
              avx512_loadu, _mm512_xor_si512, _mm512_popcnt_epi64, _mm512_add_epi64, avx512_store)
#undef write_row

enum class Isa { portable = 0, avx2 = 1, avx512 = 2 };

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return Isa::avx2;
  return Isa::portable;
}

}  // namespace

int64_t cpu_isa() { return static_cast<int64_t>(best_isa()); }

// x: float32 [N, C, H, W] -> words [N, H, W, G, WG]; bit = x >= t (direction 1), x <= t (-1), t > 0 (0).
torch::Tensor pack_input(torch::Tensor x, torch::Tensor threshold, torch::Tensor direction, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "pack_input takes a float32 NCHW tensor");
  x = x.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(c % groups == 0, "channels must divide into groups");
  const int64_t cg = c / groups, wg = (cg + 63) / 64, pixels = h * w;
  auto words = torch::zeros({n, h, w, groups, wg}, torch::dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  const float* tp = threshold.contiguous().data_ptr<float>();
  auto dir_t = direction.contiguous();
  const int8_t* dp = dir_t.data_ptr<int8_t>();
  uint64_t* out = reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>());
  constexpr int64_t kBlock = 16;
  const int64_t pixel_blocks = (pixels + kBlock - 1) / kBlock;
  // one task = one image, one word of 64 channels, 16 pixels: reads 16 contiguous floats per channel,
  // sets the channel's bit in 16 words without a branch (the compiler vectorizes the inner loops)
  at::parallel_for(0, n * groups * wg * pixel_blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pb = task % pixel_blocks, word_index = task / pixel_blocks;
      const int64_t w = word_index % wg, g = (word_index / wg) % groups, img = word_index / (wg * groups);
      const int64_t p0 = pb * kBlock, np = std::min(kBlock, pixels - p0);
      const int64_t c_begin = g * cg + w * 64, nc = std::min<int64_t>(64, cg - w * 64);
      uint64_t acc[kBlock] = {0};
      for (int64_t bit = 0; bit < nc; ++bit) {
        const float* src = xp + (img * c + c_begin + bit) * pixels + p0;
        const float t = tp[c_begin + bit];
        const int8_t d = dp[c_begin + bit];
        if (d > 0) {
          for (int64_t j = 0; j < np; ++j) acc[j] |= static_cast<uint64_t>(src[j] >= t) << bit;
        } else if (d < 0) {
          for (int64_t j = 0; j < np; ++j) acc[j] |= static_cast<uint64_t>(src[j] <= t) << bit;
        } else if (t > 0) {
          for (int64_t j = 0; j < np; ++j) acc[j] |= uint64_t(1) << bit;
        }
      }
      for (int64_t j = 0; j < np; ++j) out[((img * pixels + p0 + j) * groups + g) * wg + w] = acc[j];
    }
  });
  return words;
}

torch::Tensor binary_conv2d(torch::Tensor packed, torch::Tensor weight, int64_t cin, int64_t cout,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                            int64_t dh, int64_t dw, int64_t groups, c10::optional<torch::Tensor> scale,
                            c10::optional<torch::Tensor> bias, int64_t isa) {
  TORCH_CHECK(packed.dim() == 5 && packed.scalar_type() == torch::kInt64, "packed input must be [N,H,W,G,WG] int64");
  TORCH_CHECK(weight.dim() == 5 && weight.scalar_type() == torch::kInt64, "packed weight must be [G,KH,KW,WG,COB] int64");
  ConvShape s;
  s.n = packed.size(0); s.h = packed.size(1); s.w = packed.size(2); s.groups = groups; s.wg = packed.size(4);
  s.kh = kh; s.kw = kw; s.sh = sh; s.sw = sw; s.ph = ph; s.pw = pw; s.dh = dh; s.dw = dw;
  s.ho = (s.h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  s.wo = (s.w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  s.cout = cout; s.cout_g = cout / groups; s.cob = weight.size(4); s.cin_g = cin / groups;
  TORCH_CHECK(packed.size(3) == groups && weight.size(0) == groups && weight.size(3) == s.wg, "layout mismatch");
  TORCH_CHECK(s.cob % 8 == 0 && s.cob >= s.cout_g, "weight blocks must be padded to 8 output channels");
  auto out = torch::empty({s.n, cout, s.ho, s.wo}, torch::dtype(torch::kFloat32));
  const uint64_t* in = reinterpret_cast<const uint64_t*>(packed.contiguous().data_ptr<int64_t>());
  auto wcont = weight.contiguous();
  const uint64_t* wt = reinterpret_cast<const uint64_t*>(wcont.data_ptr<int64_t>());
  torch::Tensor sc, bi;
  const float* scale_p = nullptr;
  const float* bias_p = nullptr;
  if (scale.has_value()) { sc = scale->contiguous(); scale_p = sc.data_ptr<float>(); }
  if (bias.has_value()) { bi = bias->contiguous(); bias_p = bi.data_ptr<float>(); }
  float* outp = out.data_ptr<float>();
  const Isa chosen = static_cast<Isa>(std::min<int64_t>(isa, static_cast<int64_t>(best_isa())));
  at::parallel_for(0, s.n * s.ho, 1, [&](int64_t begin, int64_t end) {
    if (chosen == Isa::avx512) conv_avx512(s, in, wt, scale_p, bias_p, outp, begin, end);
    else if (chosen == Isa::avx2) conv_avx2(s, in, wt, scale_p, bias_p, outp, begin, end);
    else conv_portable(s, in, wt, scale_p, bias_p, outp, begin, end);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", &cpu_isa, "best code path on this CPU: 0 portable, 1 AVX2, 2 AVX-512 VPOPCNTDQ");
  m.def("pack_input", &pack_input, "threshold and pack a float NCHW tensor into [N,H,W,G,WG] words");
  m.def("binary_conv2d", &binary_conv2d, "packed binary conv2d with fused scale and bias");
}
