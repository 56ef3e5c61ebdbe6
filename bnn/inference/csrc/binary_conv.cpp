// Packed binary convolution on the CPU: XNOR-popcount over 64-bit words (on AVX-512 and AVX2, over 32-bit words
// when a group has at most 32 input channels), three code paths chosen at run time (AVX-512 with VPOPCNTDQ, AVX2,
// portable C++), threads from ATen's pool (torch.get_num_threads()).
//
// Layouts (int64 words, bit i of a word = channel 64 * word + i of the group, 1 = +1):
//   packed input  [G, WG, N, H, SW, WP]       WG = ceil(C_in / G / 64), SW the stride, WP = ceil(W / SW); int32
//                                             words where the AVX-512 or AVX2 path runs groups of at most 32
//                                             channels (packed_word_bytes): half the memory, and twice the
//                                             pixels to a vector
//   packed weight [G, B, KH, KW, WG, 8]       B = ceil(C_out / G / 8) blocks of 8 output channels, zero bits in
//                                             padding: the weights of a block are one contiguous stream
// The input is a plane of words per group and word of 64 channels, its rows those of every image in turn: in
// a convolution of stride 1 whose output is as large as its input, output pixel q (flat over the batch) finds
// the words of each tap at q plus a fixed offset, so that vectors of pixels run on across rows and images.
// A tap outside the input (zero padding) is skipped: it contributes 0, as F.conv2d's zero padding does to
// the fake-binarized model. The sum over the valid taps is n_valid - 2 * popcount(a xor w), n_valid =
// valid taps * C_in / G; zero bits pad both operands, so the padding of a word never counts.
//
// The epilogue is a short program of per-channel steps (multiply, add, add a residual tensor, PReLU) run
// on the integer sums while they are in cache: the scale and bias of the binary layer and the elementwise
// operations the converter fused after it. Compiled with -ffp-contract=off: each step rounds like the torch
// op it replaces (a multiply, then an add; never a fused multiply-add). When the next layer is a binary
// convolution too, the epilogue also compares its results with that layer's thresholds and writes them as
// that layer's packed input (one byte of 8 channels per pixel and block), so the next layer packs nothing.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

namespace bnn {
namespace {

// Groups of at most 32 input channels: on AVX-512 and AVX2, the half-word path (32-bit lanes) runs them, on
// input words of 32 bits (packed_word_bytes).
inline bool half_words(int64_t cin_g) { return cin_g <= 32; }

struct ConvShape {
  int64_t n, h, w, groups, wg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cout, cout_g, cob, cin_g, wp;  // cob = 8 B
  int64_t word_bytes;  // of the packed input's words: 8, or 4 (packed_word_bytes)
  // the output tensor's channels, and the first of them this layer writes (out_c > cout when other layers, whose
  // outputs the network concatenates, write the others); the residual has this layer's cout channels
  int64_t out_c, out_off;
  // the weight words of output channel c0 (of group g), for tap 0 and word 0: then + (tap * wg + word) * 8
  int64_t weight_offset(int64_t g, int64_t c0) const { return ((g * (cob / 8) + c0 / 8) * kh * kw * wg) * 8 + c0 % 8; }
  // the packed input's word `words` words on from `in`
  const void* input_word(const void* in, int64_t words) const {
    return static_cast<const char*>(in) + words * word_bytes;
  }
};

// Epilogue step codes (bnn/inference/modules.py: EPILOGUE_STEPS).
// kMultiplyAdd (v * a + b, one rounding) takes two rows of parameters, a then b; every other step one.
enum Step : int64_t { kMultiply = 0, kAdd = 1, kAddResidual = 2, kPReLU = 3, kMultiplyAdd = 4 };

// The input bit of the next binary layer, as pack_input computes it: x >= t (direction 1), x <= t (-1),
// t > 0 (0, a constant channel). NaN gives 0.
inline bool threshold_bit(float x, float t, int8_t d) { return d > 0 ? x >= t : (d < 0 ? x <= t : t > 0.0f); }

// The word of column w in a row of words phase-split by stride sw (wp words per phase).
inline int64_t phase_word(int64_t w, int64_t sw, int64_t wp) { return (w % sw) * wp + w / sw; }

// The next binary layer's packed input, written by the epilogue: [G, WG, N, Ho, SW, WP] words (the layout of
// pack_input, for the output rows; words of word_bytes bytes), bits from threshold_bit with that layer's
// per-channel thresholds.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "PackOut writes byte k of a word as its bits 8k..8k+7");
struct PackOut {
  uint8_t* data;
  const float* threshold;
  const int8_t* direction;
  int64_t groups, cin_g, wg, n, sw, wp, wo, word_bytes;  // wo: pixels per row
  // the next layer's input channel of this layer's output channel 0: several layers whose outputs the network
  // concatenates write one packed input, each its channels'
  int64_t channel_offset;
  // The byte of a word's first 8 channels is written as the whole word, zeros above it: the padding channels of
  // a group's last word are then zero with nothing cleared beforehand. Set when this layer has one group: one
  // thread then writes all of a word's bytes (Share), the first before the others (its blocks in order).
  bool whole_words;
  // the byte of output channels co0 .. co0 + 7 (co0 + channel_offset a multiple of 8 within the next layer's
  // group) in the word of output pixel 0 of row (n, oh); the rows of all images follow on from there
  uint8_t* row(int64_t image, int64_t ho, int64_t oh, int64_t co0) const {
    const int64_t g = (co0 + channel_offset) / cin_g, ci = (co0 + channel_offset) % cin_g;
    return data + ((((g * wg + ci / 64) * n + image) * ho + oh) * sw * wp) * word_bytes + (ci % 64) / 8;
  }
  // which byte of its word `first` is (the words are aligned to their size)
  int64_t byte_in_word(const uint8_t* first) const {
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(first) & static_cast<uintptr_t>(word_bytes - 1));
  }
  // Writes bytes[0 .. count) as the bytes of pixels p .. p + count - 1 (p flat over the rows from `first`, a
  // row's byte): pixel p is in row p / wo, at its column's word of the phase-split row. (Inlined: a call from
  // an epilogue makes the compiler save the dot loop's vector registers around it.)
  __attribute__((always_inline)) void store(uint8_t* first, int64_t p, const uint8_t* bytes, int64_t count) const {
    if (word_bytes == 8) store_in<uint64_t>(first, p, bytes, count);
    else store_in<uint32_t>(first, p, bytes, count);
  }
  // store into words of type Word
  template <typename Word>
  __attribute__((always_inline)) void store_in(uint8_t* first, int64_t p, const uint8_t* bytes, int64_t count) const {
    if (whole_words && reinterpret_cast<uintptr_t>(first) % sizeof(Word) == 0) {
      store_as<Word, sizeof(Word)>(reinterpret_cast<Word*>(first), p, bytes, count);
    } else {
      store_as<uint8_t, sizeof(Word)>(first, p, bytes, count);
    }
  }
  // store, each byte written as a T (its word, or just the byte) at `first` + kWordBytes bytes per pixel's word
  template <typename T, int64_t kWordBytes>
  __attribute__((always_inline)) void store_as(T* first, int64_t p, const uint8_t* bytes, int64_t count) const {
    constexpr int64_t kStride = kWordBytes / sizeof(T);
    if (sw == 1) {  // (wp = wo: the words of the rows follow one another)
      for (int64_t j = 0; j < count; ++j) first[(p + j) * kStride] = bytes[j];
      return;
    }
    int64_t r = p / wo, col = p % wo, phase = col % sw, index = col / sw;  // (counted on from here)
    for (int64_t j = 0; j < count; ++j) {
      first[((r * sw + phase) * wp + index) * kStride] = bytes[j];
      if (++col == wo) {
        col = phase = index = 0;
        ++r;
      } else if (++phase == sw) {
        phase = 0;
        ++index;
      }
    }
  }
};

struct Epilogue {
  const int64_t* codes;
  int64_t steps;
  const float* params;  // [rows, channels]: one row per step, two for kMultiplyAdd
  int64_t channels;
  const float* residual;  // NCHW like the output, or null
  const PackOut* pack;    // or null
};

// Where a register block's results go: the outputs of channels co0 .. co0 + channels - 1 from the block's
// first pixel ow0 (valid outputs left from there), or the task's tile; and the bytes of the next layer's packed
// input (PackOut::row of the pixels' first row), or null. In a row (image_pixels = 0), out and residual point at
// the block's first output; flat over the batch (conv_tasks_flat), at image 0's pixel 0 of channel co0, and the
// block's first pixel is pixel `local` of image `image` (images of image_pixels outputs, image_stride apart in
// the output, residual_image_stride in the residual: the output may have more channels, ConvShape::out_c).
struct BlockOut {
  const Epilogue* e;
  int64_t co0, channels, channel_stride, valid, ow0;
  const float* n_valid;  // the pixels' counts of valid taps x channels, as floats (exact), from ow0
  float* out;
  const float* residual;
  int32_t* tile;
  int64_t tile_stride;
  uint8_t* bits;
  int64_t image_pixels, image_stride, image, local, residual_image_stride;
};

// The dot functions load whole vectors, masking lanes in the sums alone (dot_block): the words they may reach before
// a packed input's first word and after its last, on any path (a bound): the taps' rows above and below, their
// columns, a register block's lanes past the last pixel. The input's storage must reach that far on either side.
inline int64_t load_reach_words(const ConvShape& s) { return (s.kh * s.dh + 1) * s.sw * s.wp + s.kw * s.dw + 64; }

// Lane masks of vectors of `lanes` lanes, as arrays of bytes: one byte a mask for up to 8 lanes, two (a
// uint16_t) for up to 16. (The 64-bit path's dot loop reads its masks as bytes: with two-byte masks, their
// loads in each tap took an instruction more before the masked loads, and 64@56 and 128@28 ran 2-5% slower.)
inline int64_t mask_bytes(int64_t lanes) { return lanes > 8 ? 2 : 1; }
inline void set_mask(uint8_t* masks, int64_t i, unsigned bits, int64_t bytes) {
  if (bytes == 1) masks[i] = static_cast<uint8_t>(bits);
  else reinterpret_cast<uint16_t*>(masks)[i] = static_cast<uint16_t>(bits);
}
inline unsigned get_mask(const uint8_t* masks, int64_t i, int64_t bytes) {
  return bytes == 1 ? masks[i] : reinterpret_cast<const uint16_t*>(masks)[i];
}

// A convolution of stride 1 whose output is as large as its input ("same" padding): its output pixels can
// run flat over the batch (conv_tasks_flat).
inline bool runs_flat(const ConvShape& s) { return s.sh == 1 && s.sw == 1 && s.ho == s.h && s.wo == s.w; }

// Register blocks: a run of pixel vectors (of `lanes` pixels each) in blocks of at most max_units units of `unit`
// vectors; each unit has one lane mask per tap (of mask_lanes() lanes, mask_size() bytes). A block: its vectors
// (P, the dot function's), its first vector in the run, its first unit there and its units (the last one
// possibly half empty).
struct Block {
  int vectors;
  int64_t first_vector, first_unit, units;
};
struct Blocking {
  int64_t lanes, unit, max_units;
  int64_t mask_lanes() const { return unit * lanes; }
  int64_t mask_size() const { return mask_bytes(mask_lanes()); }
  // `vectors` vectors in blocks as even as possible (7 = 3 + 2 + 2)
  std::vector<Block> split(int64_t vectors) const {
    const int64_t units = (vectors + unit - 1) / unit, nblocks = (units + max_units - 1) / max_units;
    std::vector<Block> blocks(nblocks);
    for (int64_t blk = 0, u = 0; blk < nblocks; ++blk) {
      const int64_t block_units = units / nblocks + (blk < units % nblocks ? 1 : 0);
      blocks[blk] = {static_cast<int>(std::min(unit * block_units, vectors - u * unit)), u * unit, u, block_units};
      u += block_units;
    }
    return blocks;
  }
  // conv_tasks_flat's chunks of pixel vectors, two register blocks each: their vectors, and how many make a batch
  int64_t chunk_vectors() const { return 2 * unit * max_units; }
  int64_t chunks(const ConvShape& s) const {
    const int64_t chunk_pixels = chunk_vectors() * lanes;
    return (s.n * s.ho * s.wo + chunk_pixels - 1) / chunk_pixels;
  }
};

// What conv_tasks_flat needs to know of the pixels, flat over the batch, for its register blocks (`blocking`):
// - per unit v and tap t, the lanes whose tap falls inside the lane's own image: mask v * taps + t of mask_bytes
//   bytes, bit l for pixel v * mask_lanes + l;
// - per pixel, its valid taps x input channels, as a float (padded with zeros to whole units and 16 more);
// - the blocks of a chunk (the last chunk's: `last`), and the taps each block runs, as the dot functions take
//   them: those inside the input for some lane of the block. Blocks share a few distinct lists of taps (a block
//   misses a row of taps only at the top or the bottom of an image): block i of chunk c runs list
//   block_list[c * blocks_per_chunk + i], whose list_taps[list] taps are entries list * taps ... of tap_in (the
//   word offset from the block's first pixel), tap_w (of the weights) and tap_mask (the index of its mask).
//   (Made once per shape: built per call, they cost 64@56 2.4-4.3% and 128@28 up to 2.5%.)
struct FlatGeometry {
  std::vector<uint8_t> masks;
  int64_t mask_bytes;
  std::vector<float> n_valid_f;
  std::vector<Block> full, last;
  int64_t blocks_per_chunk;
  std::vector<int32_t> block_list;
  std::vector<int64_t> tap_in, tap_w;
  std::vector<int> tap_mask, list_taps;
};

FlatGeometry compute_flat_geometry(const ConvShape& s, const Blocking& blocking) {
  const int64_t taps = s.kh * s.kw, image_pixels = s.ho * s.wo, pixels = s.n * image_pixels;
  const int64_t lanes = blocking.mask_lanes(), units = (pixels + lanes - 1) / lanes;
  const int64_t bytes = mask_bytes(lanes);
  FlatGeometry geo;
  geo.masks.assign(units * taps * bytes, 0);
  geo.mask_bytes = bytes;
  geo.n_valid_f.assign(units * lanes + 16, 0.0f);
  for (int64_t q = 0; q < pixels; ++q) {
    const int64_t local = q % image_pixels, oh = local / s.wo, ow = local % s.wo;
    int64_t valid = 0;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh - s.ph + i * s.dh;
      if (ih < 0 || ih >= s.h) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t iw = ow - s.pw + j * s.dw;
        if (iw < 0 || iw >= s.w) continue;
        const int64_t m = (q / lanes) * taps + i * s.kw + j;
        set_mask(geo.masks.data(), m, get_mask(geo.masks.data(), m, bytes) | 1u << (q % lanes), bytes);
        ++valid;
      }
    }
    geo.n_valid_f[q] = static_cast<float>(valid * s.cin_g);  // (exact: below 2^24, checked by binary_conv2d)
  }
  const int64_t chunk_vectors = blocking.chunk_vectors(), chunk_units = chunk_vectors / blocking.unit;
  const int64_t chunks = blocking.chunks(s), vectors = (pixels + blocking.lanes - 1) / blocking.lanes;
  geo.full = blocking.split(chunk_vectors);
  geo.last = blocking.split(vectors - (chunks - 1) * chunk_vectors);
  geo.blocks_per_chunk = static_cast<int64_t>(std::max(geo.full.size(), geo.last.size()));
  geo.block_list.assign(chunks * geo.blocks_per_chunk, 0);
  std::map<std::vector<bool>, int32_t> lists;  // the distinct lists, by the taps they run
  std::vector<bool> inside(taps);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const std::vector<Block>& blocks = chunk + 1 < chunks ? geo.full : geo.last;
    for (size_t i = 0; i < blocks.size(); ++i) {
      const uint8_t* const masks = geo.masks.data() + (chunk * chunk_units + blocks[i].first_unit) * taps * bytes;
      for (int64_t t = 0; t < taps; ++t) {
        unsigned any = 0;
        for (int64_t k = 0; k < blocks[i].units; ++k) any |= get_mask(masks, k * taps + t, bytes);
        inside[t] = any != 0;
      }
      const auto [list, added] = lists.emplace(inside, static_cast<int32_t>(lists.size()));
      if (added) {
        int count = 0;
        for (int64_t t = 0; t < taps; ++t) {
          if (!inside[t]) continue;
          geo.tap_in.push_back((t / s.kw * s.dh - s.ph) * s.w + t % s.kw * s.dw - s.pw);
          geo.tap_w.push_back(t * s.wg * 8);
          geo.tap_mask.push_back(static_cast<int>(t));
          ++count;
        }
        geo.tap_in.resize(lists.size() * taps);  // (each list `taps` entries long)
        geo.tap_w.resize(lists.size() * taps);
        geo.tap_mask.resize(lists.size() * taps);
        geo.list_taps.push_back(count);
      }
      geo.block_list[chunk * geo.blocks_per_chunk + static_cast<int64_t>(i)] = list->second;
    }
  }
  return geo;
}

// compute_flat_geometry, kept for the last 32 shapes: a layer runs again and again on the same shape.
std::shared_ptr<const FlatGeometry> flat_geometry(const ConvShape& s, const Blocking& blocking) {
  using Key = std::array<int64_t, 13>;
  const Key key{s.n, s.h, s.w, s.kh, s.kw, s.ph, s.pw, s.dh, s.dw, s.cin_g, blocking.lanes, blocking.unit,
                blocking.max_units};
  static std::mutex mutex;
  static std::deque<std::pair<Key, std::shared_ptr<const FlatGeometry>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& entry : cache)
    if (entry.first == key) return entry.second;
  auto geo = std::make_shared<const FlatGeometry>(compute_flat_geometry(s, blocking));
  if (cache.size() == 32) cache.pop_front();
  cache.emplace_back(key, geo);
  return geo;
}

// The portable path: "vectors" of one lane (one pixel), plain C++.
namespace portable {
using Vec = uint64_t;
using Mask = bool;
constexpr int64_t kLanes = 1;
constexpr int kPixelVectors = 4, kChannels = 8;
inline Mask lane_mask(uint8_t bits) { return bits & 1; }
inline Vec vzero() { return 0; }
inline Vec vload(const uint64_t* p) { return *p; }
inline Vec vbcast(uint64_t v) { return v; }
inline Vec vxor(Vec a, Vec b) { return a ^ b; }
inline Vec vpopcnt(Vec a) { return static_cast<Vec>(__builtin_popcountll(a)); }
inline Vec vadd(Vec a, Vec b) { return a + b; }
inline Vec vsub(Vec a, Vec b) { return a - b; }
inline Vec macc(Vec acc, Mask m, Vec v) { return m ? acc + v : acc; }
inline void store_i32(int32_t* p, Vec v) { *p = static_cast<int32_t>(static_cast<int64_t>(v)); }
#include "conv_kernel.h"
}  // namespace portable

#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
namespace avx2 {
using Vec = __m256i;
using Mask = __m256i;  // all ones in the lanes that count
constexpr int64_t kLanes = 4;
constexpr int kPixelVectors = 2, kChannels = 4;
inline Mask lane_mask(uint8_t bits) {
  const __m256i lane_bits = _mm256_setr_epi64x(1, 2, 4, 8);
  return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(bits), lane_bits), lane_bits);
}
inline Vec vzero() { return _mm256_setzero_si256(); }
inline Vec vload(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline Vec vbcast(uint64_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
inline Vec vxor(Vec a, Vec b) { return _mm256_xor_si256(a, b); }
// Mula's nibble lookup: the popcount of each byte of v (at most 8), in bytes
inline __m256i byte_popcounts(__m256i v) {
  const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lookup, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}
// the sums of each 64-bit lane's 8 bytes
inline Vec sum_bytes(Vec v) { return _mm256_sad_epu8(v, _mm256_setzero_si256()); }
inline Vec add_bytes(Vec counts, Mask m, Vec v) { return _mm256_add_epi8(counts, _mm256_and_si256(v, m)); }
// the popcounts of the 64-bit lanes: the byte counts, summed 8 to a lane
inline Vec vpopcnt(Vec v) { return sum_bytes(byte_popcounts(v)); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_epi64(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm256_sub_epi64(a, b); }
inline Vec macc(Vec acc, Mask m, Vec v) { return _mm256_add_epi64(acc, _mm256_and_si256(v, m)); }
inline void store_i32(int32_t* p, Vec v) {
  const __m256i low_halves = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(low_halves));
}

// Groups of at most 32 input channels (half_words), in 32-bit words: 8 pixels' words make one vector of 32-bit
// lanes, twice the pixels of a vector of 64-bit words, whose high halves would be zero. The same sums as
// dot_block, into the task's tile, for P vectors of 4 pixels (taken in pairs: units of 8 lanes, one mask byte
// each); one word per tap, the low half of each weight word. Popcounts by Mula's nibble lookup, kept as byte
// counts (at most 8 a tap: 31 taps fit in a byte) and summed into the lanes' 32 bits, by two multiply-adds with
// ones, every 31 taps and at the end.
template <int P>
inline void dot_block_half(const void* in, const int64_t* tap_in, const int64_t* tap_w, const int* tap_mask,
                           int64_t taps, int64_t, int64_t, int64_t, const uint64_t* wt, const void* mask_data,
                           int64_t mask_stride, const int64_t* n_valid, const BlockOut& out) {
  const uint8_t* const masks = static_cast<const uint8_t*>(mask_data);
  constexpr int Q = (P + 1) / 2;
  constexpr int64_t kTapsPerByte = 31;
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256i sums[Q][kChannels], counts[Q][kChannels];
  for (int q = 0; q < Q; ++q)
    for (int c = 0; c < kChannels; ++c) sums[q][c] = counts[q][c] = _mm256_setzero_si256();
  const auto flush = [&] {  // byte counts into the 32-bit sums
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int q = 0; q < Q; ++q)
      for (int c = 0; c < kChannels; ++c) {
        sums[q][c] = _mm256_add_epi32(sums[q][c], _mm256_madd_epi16(_mm256_maddubs_epi16(counts[q][c], ones8), ones16));
        counts[q][c] = _mm256_setzero_si256();
      }
  };
  for (int64_t t = 0; t < taps; ++t) {
    if (t > 0 && t % kTapsPerByte == 0) flush();
    const int32_t* a = static_cast<const int32_t*>(in) + tap_in[t];
    const uint64_t* w = wt + tap_w[t];
    __m256i m[Q], x[Q];
    for (int q = 0; q < Q; ++q) {  // (an odd P's last 4 lanes: past the row, their mask bits 0)
      const __m256i bits = _mm256_set1_epi32(masks[q * mask_stride + tap_mask[t]]);
      m[q] = _mm256_cmpeq_epi32(_mm256_and_si256(bits, lane_bits), lane_bits);
      x[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + q * 8));  // (whole vectors, as dot_block loads)
    }
    for (int c = 0; c < kChannels; ++c) {
      const __m256i wv = _mm256_set1_epi32(static_cast<int32_t>(w[c]));
      for (int q = 0; q < Q; ++q) {
        counts[q][c] =
            _mm256_add_epi8(counts[q][c], _mm256_and_si256(byte_popcounts(_mm256_xor_si256(x[q], wv)), m[q]));
      }
    }
  }
  flush();
  // n_valid - 2 * popcounts, into the tile: 8 lanes a unit, the 4 of an odd P's last unit
  for (int q = 0; q < Q; ++q) {
    const bool whole = 2 * q + 1 < P;
    const __m256i nv_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(n_valid + q * 8));
    const __m256i nv_hi = whole ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(n_valid + q * 8 + 4)) : nv_lo;
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i nv = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(nv_lo, pick),
                                          _mm256_permutevar8x32_epi32(nv_hi, pick), 0xf0);
    for (int c = 0; c < kChannels; ++c) {
      const __m256i result = _mm256_sub_epi32(nv, _mm256_add_epi32(sums[q][c], sums[q][c]));
      int32_t* const dst = out.tile + c * out.tile_stride + q * 8;
      if (whole) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), result);
      else _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(result));
    }
  }
}
// The half-word path's blocks: up to 4 vectors of 4 pixels (2 vectors of 8 lanes, 8 accumulators).
#define BNN_HALF_WORDS
#define BNN_BYTE_COUNTS
constexpr int kHalfPixelVectors = 4;
#include "conv_kernel.h"
#undef BNN_BYTE_COUNTS
#undef BNN_HALF_WORDS
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq")
namespace avx512 {
using Vec = __m512i;
using Mask = __mmask8;
constexpr int64_t kLanes = 8;
// blocks of 2 vectors (16 accumulators): blocks of 3 ran 8-10% slower on 64@56 and 128@28 with flat pixels, and
// 3.5-4% slower on 128@56 (rows of 7 vectors in 3 + 2 + 2 rather than 2 + 2 + 2 + 1)
constexpr int kPixelVectors = 2, kChannels = 8;
inline Mask lane_mask(uint8_t bits) { return static_cast<__mmask8>(bits); }
inline Vec vzero() { return _mm512_setzero_si512(); }
inline Vec vload(const uint64_t* p) { return _mm512_loadu_si512(p); }
inline Vec vbcast(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
inline Vec vxor(Vec a, Vec b) { return _mm512_xor_si512(a, b); }
inline Vec vpopcnt(Vec v) { return _mm512_popcnt_epi64(v); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_epi64(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm512_sub_epi64(a, b); }
inline Vec macc(Vec acc, Mask m, Vec v) { return _mm512_mask_add_epi64(acc, m, acc, v); }
inline void store_i32(int32_t* p, Vec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32(v)); }
// The epilogue on the register block itself, 16 pixels (two vectors of sums) at a time: the 8 channels'
// sums become 16 floats each (int32, then float, as the reference converts its int32 sums); each step is
// one branch, then straight-line code over the 8 vectors, which stay in registers; the results go straight
// to the output rows, with no tile in between. Same IEEE operations in the same order as the torch ops.
// With a PackOut, each channel's compare sets its bit in a vector of 16 bytes (one per pixel), then stored
// to the pixels' words.
#define BNN_DIRECT_EPILOGUE
// 16 pixels of a block flat over the batch that cross into the next image(s), as runs of pixels of one image:
// per run, the offset (from BlockOut::out) of its lane 0, and its lanes.
struct Runs {
  int count;
  int64_t offset[17], residual_offset[17];
  __mmask16 mask[17];
};
inline void pixel_runs(const BlockOut& out, int q, __mmask16 m, Runs& runs) {
  int64_t image = out.image, local = out.local + q * 16;
  while (local >= out.image_pixels) {
    local -= out.image_pixels;
    ++image;
  }
  runs.count = 0;
  for (int lane = 0; lane < 16; ++image, local = 0) {
    const int64_t run = std::min<int64_t>(16 - lane, out.image_pixels - local);
    const unsigned lanes = ((1u << run) - 1) << lane;
    runs.offset[runs.count] = image * out.image_stride + local - lane;
    runs.residual_offset[runs.count] = image * out.residual_image_stride + local - lane;
    runs.mask[runs.count++] = static_cast<__mmask16>(m & lanes);
    lane += static_cast<int>(run);
  }
}

// bit c of a byte of the next layer's input: channel c of a block
alignas(32) constexpr int32_t kChannelBit[kChannels] = {1, 2, 4, 8, 16, 32, 64, 128};

// The epilogue of 16 pixels (from pixel 16 q of the block, `lanes` of them valid, mask m) x `channels` channels
// (BlockOut::channels, or a constant where the caller knows it), whose float sums are in f; kAcross: pixels of two
// or more images (runs), else of one, from BlockOut::out + first (and BlockOut::residual + residual_first).
template <bool kAcross>
__attribute__((always_inline)) inline void finish_pixels_of(__m512 (&f)[kChannels], int q, int64_t lanes,
                                                            __mmask16 m, const BlockOut& out, int64_t first,
                                                            int64_t residual_first, const Runs* runs,
                                                            const int64_t channels) {
  const Epilogue& e = *out.e;
  const int64_t channel_stride = out.channel_stride, steps = e.steps, prm_stride = e.channels;
  const int64_t* const codes = e.codes;
  float* const dst = out.out + first;
  const float* const residual = out.residual ? out.residual + residual_first : nullptr;
  uint8_t* const bits_row = out.bits;
  // per step, a chain of tests of its code (as a switch, a jump table: 32@112 1.5-2% slower, 4% with a four-step
  // epilogue, 64@56 1%), then the 8 channels' vectors in registers; a channel past the block's end (its parameters
  // and residual would be past the arrays' ends) reads channel 0's and is never stored
  const float* prm = e.params + out.co0;
  for (int64_t s = 0; s < steps; ++s, prm += prm_stride) {
#define BNN_PARAM(c) _mm512_set1_ps(prm[(c) < channels ? (c) : 0])
    const int64_t code = codes[s];
    if (code == kMultiply) {
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c) f[c] = _mm512_mul_ps(f[c], BNN_PARAM(c));
    } else if (code == kAdd) {
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c) f[c] = _mm512_add_ps(f[c], BNN_PARAM(c));
    } else if (code == kAddResidual) {
      if constexpr (kAcross) {
        for (int c = 0; c < channels; ++c) {
          __m512 r = _mm512_setzero_ps();
          for (int k = 0; k < runs->count; ++k)
            r = _mm512_mask_loadu_ps(r, runs->mask[k], out.residual + runs->residual_offset[k] + c * channel_stride);
          f[c] = _mm512_add_ps(f[c], r);
        }
      } else {
#pragma GCC unroll 16
        for (int c = 0; c < kChannels; ++c)
          f[c] = _mm512_add_ps(f[c], _mm512_maskz_loadu_ps(c < channels ? m : static_cast<__mmask16>(0),
                                                           residual + (c < channels ? c : 0) * channel_stride));
      }
    } else if (code == kPReLU) {  // where not (v > 0), NaN included: p * v
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c)
        f[c] = _mm512_mask_mul_ps(f[c], _mm512_cmp_ps_mask(f[c], _mm512_setzero_ps(), _CMP_NGT_UQ), BNN_PARAM(c), f[c]);
    } else if (code == kMultiplyAdd) {
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c)
        f[c] = _mm512_fmadd_ps(f[c], BNN_PARAM(c), _mm512_set1_ps(prm[prm_stride + (c < channels ? c : 0)]));
      prm += prm_stride;
    }
#undef BNN_PARAM
  }
  // The next layer's bits, before anything is stored (for all the compiler knows, a store through a float pointer
  // could change the thresholds): each threshold read once, as the compare's broadcast operand. Each channel's bit
  // comes from kChannelBit through an empty asm, so that the OR takes it as a broadcast operand too, where the
  // compiler would build the constant in a register each time. (With the compares after the stores and the
  // constants built: 32@112 3.8% slower, 64@56 4.5-5.3%, 128@28 2%.)
  __m512i bits = _mm512_setzero_si512();
  if (bits_row) {
    const float* const threshold = e.pack->threshold + out.co0;
    const int8_t* const direction = e.pack->direction + out.co0;
    const int32_t* bit = kChannelBit;
    asm("" : "+r"(bit));
    uint64_t directions = 0;  // (8 channels whose bit is x >= t, the usual case: no branch per channel)
    if (channels == kChannels) std::memcpy(&directions, direction, sizeof directions);
    if (directions == 0x0101010101010101ull) {
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c)
        bits = _mm512_mask_or_epi32(bits, _mm512_cmp_ps_mask(f[c], _mm512_set1_ps(threshold[c]), _CMP_GE_OQ), bits,
                                    _mm512_set1_epi32(bit[c]));
    } else {
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c) {
        if (c >= channels) break;
        const int8_t d = direction[c];
        const __mmask16 k = d > 0   ? _mm512_cmp_ps_mask(f[c], _mm512_set1_ps(threshold[c]), _CMP_GE_OQ)
                            : d < 0 ? _mm512_cmp_ps_mask(f[c], _mm512_set1_ps(threshold[c]), _CMP_LE_OQ)
                                    : static_cast<__mmask16>(threshold[c] > 0.0f ? 0xffff : 0);
        bits = _mm512_mask_or_epi32(bits, k, bits, _mm512_set1_epi32(bit[c]));
      }
    }
  }
#pragma GCC unroll 16
  for (int c = 0; c < kChannels; ++c) {
    if (c >= channels) break;
    if constexpr (kAcross) {
      for (int k = 0; k < runs->count; ++k)
        _mm512_mask_storeu_ps(out.out + runs->offset[k] + c * channel_stride, runs->mask[k], f[c]);
    } else {
      _mm512_mask_storeu_ps(dst + c * channel_stride, m, f[c]);
    }
  }
  if (bits_row) {
    const PackOut& pk = *e.pack;
    // 16 pixels whose words follow one another (the next layer's stride is 1): each pixel's byte (in its 32-bit
    // lane, widened to 64 bits for words of 64), shifted to its place in the word and stored by vectors, of whole
    // words as PackOut::store writes a word's first byte, else masked to the byte (2.6-2.8% faster on 32@112 than
    // 16 byte stores; 0.4-1.7% on 64@56 and 128@28)
    if (pk.sw == 1 && lanes == 16) {
      const int64_t byte = pk.byte_in_word(bits_row);
      const bool whole = pk.whole_words && byte == 0;
      const unsigned shift = static_cast<unsigned>(8 * byte);
      if (pk.word_bytes == 4) {  // (one vector of 16 words)
        uint32_t* const words = reinterpret_cast<uint32_t*>(bits_row - byte) + out.ow0 + q * 16;
        if (whole) _mm512_storeu_si512(words, bits);
        else _mm512_mask_storeu_epi8(words, _cvtu64_mask64(0x1111111111111111ull << byte), _mm512_slli_epi32(bits, shift));
      } else {  // (two vectors of 8 words)
        uint64_t* const words = reinterpret_cast<uint64_t*>(bits_row - byte) + out.ow0 + q * 16;
        const __m512i lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(bits)),
                      hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(bits, 1));
        if (whole) {
          _mm512_storeu_si512(words, lo);
          _mm512_storeu_si512(words + 8, hi);
        } else {
          const __mmask64 byte_mask = _cvtu64_mask64(0x0101010101010101ull << byte);
          _mm512_mask_storeu_epi8(words, byte_mask, _mm512_slli_epi64(lo, shift));
          _mm512_mask_storeu_epi8(words + 8, byte_mask, _mm512_slli_epi64(hi, shift));
        }
      }
    } else {
      alignas(16) uint8_t bytes[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtepi32_epi8(bits));
      pk.store(bits_row, out.ow0 + q * 16, bytes, lanes);
    }
  }
}

// finish_pixels_of for pixels of several images. (Inlined, as every function the epilogue calls: a call from
// the dot loop's function makes the compiler keep the accumulators in memory around it.)
__attribute__((always_inline)) inline void finish_pixels_across(const __m512 (&sums)[kChannels], int q, int64_t lanes, __mmask16 m,
                                                    const BlockOut& out) {
  Runs runs;
  pixel_runs(out, q, m, runs);
  __m512 f[kChannels];
  for (int c = 0; c < kChannels; ++c) f[c] = sums[c];
  finish_pixels_of<true>(f, q, lanes, m, out, 0, 0, &runs, out.channels);
}

// The epilogue of 16 pixels x 8 channels (finish_pixels_of), their outputs in a row or flat over the batch.
__attribute__((always_inline)) inline void finish_pixels(__m512 (&f)[kChannels], int q, int64_t lanes, __mmask16 m,
                                                         const BlockOut& out) {
  if (out.image_pixels == 0) {
    finish_pixels_of<false>(f, q, lanes, m, out, q * 16, q * 16, nullptr, out.channels);
  } else if (out.local + q * 16 + lanes <= out.image_pixels) {  // (its valid lanes within one image)
    finish_pixels_of<false>(f, q, lanes, m, out, out.image * out.image_stride + out.local + q * 16,
                            out.image * out.residual_image_stride + out.local + q * 16, nullptr, out.channels);
  } else {
    finish_pixels_across(f, q, lanes, m, out);
  }
}

// Whether a register block of `pixels` pixels is whole: all of them valid, of one image, and 8 channels (the usual
// block); if so, the offsets of its first output from BlockOut::out and BlockOut::residual.
inline bool whole_block(const BlockOut& out, int64_t pixels, int64_t& first, int64_t& residual_first) {
  if (out.channels != kChannels || out.valid < pixels) return false;
  if (out.image_pixels == 0) {  // (in a row: BlockOut::out at the block's first output)
    first = residual_first = 0;
    return true;
  }
  if (out.local + pixels > out.image_pixels) return false;  // (flat over the batch: at image 0's pixel 0)
  first = out.image * out.image_stride + out.local;
  residual_first = out.image * out.residual_image_stride + out.local;
  return true;
}

// The low 32 bits of the 64-bit lanes of a, then of b: one vector of 16 int32 lanes.
inline __m512i low_halves(__m512i a, __m512i b) {
  return _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
}

// The pixels 16 q .. 16 q + 15 of a block: how many are valid, and their mask.
inline int64_t valid_lanes(const BlockOut& out, int q, int64_t lanes_here) {
  return std::min<int64_t>(out.valid - q * 16, lanes_here);
}
inline __mmask16 lanes_mask(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << lanes) - 1);
}

// The epilogue on the register block of dot_block (P vectors of 8 pixels, 64-bit sums), 16 pixels at a time:
// n_valid - 2 * popcounts in float (every value is an integer below 2^24, so the multiply-add is exact and equals
// the reference's float(int32 sum)), then finish_pixels.
template <int P>
inline void finish_block(Vec (&acc)[P][kChannels], const int64_t*, const BlockOut& out) {
  constexpr int Q = (P + 1) / 2;
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
    const int64_t lanes = valid_lanes(out, q, 2 * q + 1 < P ? 16 : 8);
    const __mmask16 m = lanes_mask(lanes);
    constexpr int kZero = 0;  // (the index of a vector that exists, for the odd P's missing high half)
    const int hi_p = 2 * q + 1 < P ? 2 * q + 1 : kZero;
    const __m512 nv = _mm512_maskz_loadu_ps(m, out.n_valid + q * 16), minus_two = _mm512_set1_ps(-2.0f);
    __m512 f[kChannels];
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c)  // (the sums are below 2^24: their low halves are the int32 values)
      f[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low_halves(acc[2 * q][c], acc[hi_p][c])), minus_two, nv);
    finish_pixels(f, q, lanes, m, out);
  }
}

// The epilogue on a register block of dot_block_half whose vectors are whole (whole_block), inlined into the dot
// function (as finish_block is): on the accumulators in registers, with the lanes and the channels known to the
// compiler. False, and nothing done, for any other block. (With every block through finish_half_block, which takes
// the accumulators through memory: 32@112 5-6% slower, 32@56 7-8%.)
template <int P>
__attribute__((always_inline)) inline bool finish_whole_half_block(const __m512i (&acc)[(P + 1) / 2][kChannels],
                                                                   const BlockOut& out) {
  constexpr int Q = (P + 1) / 2;
  int64_t first, residual_first;
  if (P % 2 != 0 || !whole_block(out, 16 * Q, first, residual_first)) return false;
  const __m512 minus_two = _mm512_set1_ps(-2.0f);
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
    const __m512 nv = _mm512_loadu_ps(out.n_valid + q * 16);
    __m512 f[kChannels];
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c) f[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[q][c]), minus_two, nv);
    finish_pixels_of<false>(f, q, 16, static_cast<__mmask16>(0xffff), out, first + q * 16, residual_first + q * 16,
                            nullptr, kChannels);
  }
  return true;
}

// The epilogue on the other register blocks of dot_block_half (Q vectors of 16 pixels, 32-bit sums), as
// finish_block. (Not inlined: the dot loop compiles on its own, with its 24 accumulators in registers.)
template <int P>
__attribute__((noinline)) void finish_half_block(__m512i (&acc)[(P + 1) / 2][kChannels], const BlockOut& out) {
  const __m512 minus_two = _mm512_set1_ps(-2.0f);
#pragma GCC unroll 4
  for (int q = 0; q < (P + 1) / 2; ++q) {
    const int64_t lanes = valid_lanes(out, q, 2 * q + 1 < P ? 16 : 8);
    const __mmask16 mq = lanes_mask(lanes);
    const __m512 nv = _mm512_maskz_loadu_ps(mq, out.n_valid + q * 16);
    __m512 f[kChannels];
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c) f[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[q][c]), minus_two, nv);
    finish_pixels(f, q, lanes, mq, out);
  }
}

// Groups of at most 32 input channels (half_words): their input comes in 32-bit words, so 16 pixels' words make
// one vector of 32-bit lanes, and each xor / popcount / add covers twice the pixels of dot_block. The same sums
// as dot_block, for P vectors of 8 pixels (taken in pairs), with the same arguments (`in`: const uint32_t*; the
// masks: one of 16 lanes per pair); one word per tap (wg = 1), the low half of each weight word.
template <int P>
inline void dot_block_half(const void* in, const int64_t* tap_in, const int64_t* tap_w, const int* tap_mask,
                           int64_t taps, int64_t, int64_t, int64_t, const uint64_t* wt, const void* mask_data,
                           int64_t mask_stride, const int64_t*, const BlockOut& out) {
  const uint16_t* const masks = static_cast<const uint16_t*>(mask_data);
  constexpr int Q = (P + 1) / 2;
  __m512i acc[Q][kChannels];
  // tap t's popcounts, added to the accumulators, or their first values (first: std::true_type)
  const auto run_tap = [&](int64_t t, auto first) __attribute__((always_inline)) {
    const uint16_t* tap_masks = masks + tap_mask[t];
    const uint32_t* a = static_cast<const uint32_t*>(in) + tap_in[t];
    const uint64_t* w = wt + tap_w[t];
    __mmask16 m[Q];
    __m512i x[Q];
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {  // (an odd P's last 8 lanes: past the row or the batch, their masks 0)
      m[q] = tap_masks[q * mask_stride];
      x[q] = _mm512_loadu_si512(a + q * 16);  // (whole vectors, as dot_block loads)
    }
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c) {
      const __m512i wv = _mm512_set1_epi32(static_cast<int32_t>(w[c]));
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) {
        const __m512i count = _mm512_maskz_popcnt_epi32(m[q], _mm512_xor_si512(x[q], wv));
        if constexpr (decltype(first)::value) acc[q][c] = count;
        else acc[q][c] = _mm512_add_epi32(acc[q][c], count);
      }
    }
  };
  // the accumulators start from the first tap's counts rather than from zero: 24 moves and 24 adds fewer a block
  // (32@112 1.5-2.5% faster; on the 64-bit path, dot_block, the same was 1% slower)
  if (taps > 0) {
    run_tap(0, std::true_type{});
  } else {
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q)
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c) acc[q][c] = _mm512_setzero_si512();
  }
  for (int64_t t = 1; t < taps; ++t) run_tap(t, std::false_type{});
  if (finish_whole_half_block<P>(acc, out)) return;
  __m512i sums[Q][kChannels];  // (a copy: the accumulators' address is not taken, so they stay in registers)
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c) sums[q][c] = acc[q][c];
  finish_half_block<P>(sums, out);
}

// The half-word path's blocks: up to 6 vectors of 8 pixels (3 vectors of 16 lanes, 24 accumulators).
#define BNN_HALF_WORDS
constexpr int kHalfPixelVectors = 6;
#include "conv_kernel.h"
#undef BNN_DIRECT_EPILOGUE

// 64 channels x up to 32 pixels of one row: each channel's floats are two compares, whose 16-bit masks
// set that channel's bit in the pixels' words (masked ORs on four vectors of 8 words).
void pack_block(const float* x, const float* t, const int8_t* d, int64_t pixels, int64_t np, int64_t nc,
                uint64_t* words) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  const __mmask16 m0 = np >= 16 ? 0xffff : static_cast<__mmask16>((1u << np) - 1);
  const __mmask16 m1 = np >= 32 ? 0xffff : (np <= 16 ? 0 : static_cast<__mmask16>((1u << (np - 16)) - 1));
  for (int64_t bit = 0; bit < nc; ++bit) {
    const float* src = x + bit * pixels;
    // the channel's next 32 floats: the next block of this row, or the start of the next row
    _mm_prefetch(reinterpret_cast<const char*>(src + 32), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(src + 48), _MM_HINT_T0);
    __mmask16 ka, kb;
    if (d[bit] == 0) {
      ka = kb = t[bit] > 0.0f ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>(0);
    } else {
      const __m512 tv = _mm512_set1_ps(t[bit]);
      const __m512 a = _mm512_maskz_loadu_ps(m0, src), b = _mm512_maskz_loadu_ps(m1, src + 16);
      if (d[bit] > 0) {
        ka = _mm512_cmp_ps_mask(a, tv, _CMP_GE_OQ);
        kb = _mm512_cmp_ps_mask(b, tv, _CMP_GE_OQ);
      } else {
        ka = _mm512_cmp_ps_mask(a, tv, _CMP_LE_OQ);
        kb = _mm512_cmp_ps_mask(b, tv, _CMP_LE_OQ);
      }
    }
    // the halves of the masks select the 8-word vectors, in mask registers (no round trip through GPRs)
    const __m512i one = _mm512_set1_epi64(static_cast<long long>(uint64_t(1) << bit));
    acc[0] = _mm512_mask_or_epi64(acc[0], static_cast<__mmask8>(ka), acc[0], one);
    acc[1] = _mm512_mask_or_epi64(acc[1], static_cast<__mmask8>(_kshiftri_mask16(ka, 8)), acc[1], one);
    acc[2] = _mm512_mask_or_epi64(acc[2], static_cast<__mmask8>(kb), acc[2], one);
    acc[3] = _mm512_mask_or_epi64(acc[3], static_cast<__mmask8>(_kshiftri_mask16(kb, 8)), acc[3], one);
  }
  for (int v = 0; v < 4; ++v) _mm512_storeu_si512(words + 8 * v, acc[v]);
}
}  // namespace avx512
#pragma GCC pop_options

namespace portable {
void pack_block(const float* x, const float* t, const int8_t* d, int64_t pixels, int64_t np, int64_t nc,
                uint64_t* words) {
  std::fill(words, words + 32, 0);
  for (int64_t bit = 0; bit < nc; ++bit) {
    const float* src = x + bit * pixels;
    for (int64_t j = 0; j < np; ++j) words[j] |= static_cast<uint64_t>(threshold_bit(src[j], t[bit], d[bit])) << bit;
  }
}
}  // namespace portable

// The row's packed words from `block` (np of them, from column p0) at their phase-split places in dst.
template <typename Word>
void copy_words(const uint64_t* block, int64_t np, int64_t p0, int64_t stride_w, int64_t wp, Word* dst) {
  if (stride_w == 1) {
    std::copy(block, block + np, dst + p0);  // (to 32-bit words: their high halves are zero)
  } else {
    for (int64_t j = 0; j < np; ++j) dst[phase_word(p0 + j, stride_w, wp)] = static_cast<Word>(block[j]);
  }
}

}  // namespace

int64_t packed_word_bytes(int64_t channels_per_group, int64_t isa) {
  return capped_isa(isa) != Isa::portable && half_words(channels_per_group) ? 4 : 8;
}

// The tensor type of packed words of `word_bytes` bytes
static torch::ScalarType word_type(int64_t word_bytes) { return word_bytes == 4 ? torch::kInt32 : torch::kInt64; }

// A new tensor of packed words [G, WG, N, H, SW, WP] (zeros when `zeros`), a view into storage that reaches
// margin_words words further on either side, by default as far as the loads of a layer whose kernel spans at most
// 3 rows (kh * dh, as 3x3 and 1x1 kernels do) and 64 columns reach (load_reach_words). Made as at::empty makes a
// tensor, without its dispatch: made by narrow and view, it cost the calls of 128@28 and 256@14, which allocate
// the next layer's input, 1-1.5%.
static torch::Tensor empty_packed(c10::IntArrayRef sizes, torch::ScalarType type, bool zeros, int64_t margin_words = -1) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  if (margin_words < 0) margin_words = 4 * sizes[4] * sizes[5] + 128;
  const int64_t item = static_cast<int64_t>(c10::elementSize(type));
  const size_t bytes = static_cast<size_t>((numel + 2 * margin_words) * item);
  c10::Allocator* const allocator = c10::GetCPUAllocator();
  auto storage = c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(), bytes,
                                                       allocator->allocate(bytes), allocator, false);
  auto words = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                        c10::scalarTypeToTypeMeta(type));
  words.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  words.unsafeGetTensorImpl()->set_storage_offset(margin_words);
  if (zeros) std::memset(words.data_ptr(), 0, static_cast<size_t>(numel * item));
  return words;
}

// Compare and pack x (float32 NCHW, contiguous) into words [G, WG, N, H, SW, WP] of packed_word_bytes bytes,
// WP = ceil(W / SW): the words of a row are split by column phase (column w at phase w % SW, index w / SW), so
// that a convolution of stride SW finds the words of consecutive output pixels at consecutive addresses. Bit =
// threshold_bit. Writes every word of every column; the phases' words past the row's end are left as they are.
void pack_into(const float* xp, int64_t n, int64_t c, int64_t h, int64_t w, const float* tp, const int8_t* dp,
               int64_t groups, int64_t stride_w, Isa isa, void* out) {
  const int64_t cg = c / groups, wg = (cg + 63) / 64, pixels = h * w, wp = (w + stride_w - 1) / stride_w;
  const bool simd = isa == Isa::avx512, half = packed_word_bytes(cg, static_cast<int64_t>(isa)) == 4;
  constexpr int64_t kBlock = 32;
  // one task = one image, one row, one word of 64 channels; the row in blocks of 32 pixels, so that each of
  // the 64 channel rows is read front to back (the hardware prefetcher follows)
  at::parallel_for(0, n * h * groups * wg, 4, [&](int64_t begin, int64_t end) {
    uint64_t block[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t wd = task % wg, g = (task / wg) % groups, row = task / (wg * groups);
      const int64_t img = row / h, y = row % h;
      const int64_t c_begin = g * cg + wd * 64, nc = std::min<int64_t>(64, cg - wd * 64);
      const int64_t row_word = (((g * wg + wd) * n + img) * h + y) * stride_w * wp;
      for (int64_t p0 = 0; p0 < w; p0 += kBlock) {
        const int64_t np = std::min(kBlock, w - p0);
        const float* src = xp + (img * c + c_begin) * pixels + y * w + p0;
        if (simd) avx512::pack_block(src, tp + c_begin, dp + c_begin, pixels, np, nc, block);
        else portable::pack_block(src, tp + c_begin, dp + c_begin, pixels, np, nc, block);
        if (half) copy_words(block, np, p0, stride_w, wp, static_cast<uint32_t*>(out) + row_word);
        else copy_words(block, np, p0, stride_w, wp, static_cast<uint64_t*>(out) + row_word);
      }
    }
  });
}

torch::Tensor pack_input(torch::Tensor x, torch::Tensor threshold, torch::Tensor direction, int64_t groups,
                         int64_t stride_w, int64_t isa) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "pack_input takes a float32 NCHW tensor");
  TORCH_CHECK(threshold.scalar_type() == torch::kFloat32 && direction.scalar_type() == torch::kInt8,
              "pack_input: float32 thresholds and int8 directions");
  TORCH_CHECK(stride_w >= 1, "pack_input: stride must be positive");
  x = x.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(groups >= 1 && c % groups == 0, "channels must divide into groups");
  TORCH_CHECK(threshold.numel() == c && direction.numel() == c, "one threshold and direction per channel");
  const int64_t wg = (c / groups + 63) / 64, wp = (w + stride_w - 1) / stride_w;
  const auto words_type = word_type(packed_word_bytes(c / groups, isa));
  // (zeros where pack_into writes nothing: the phases' words past the row's end)
  auto words = empty_packed({groups, wg, n, h, stride_w, wp}, words_type, stride_w * wp != w);
  auto t_c = threshold.contiguous();
  auto d_c = direction.contiguous();
  pack_into(x.data_ptr<float>(), n, c, h, w, t_c.data_ptr<float>(), d_c.data_ptr<int8_t>(), groups, stride_w,
            capped_isa(isa), words.data_ptr());
  return words;
}

// The next layer's packed input from the output, after the convolution, one byte of 8 channels at a time through
// PackOut::store (the AVX2 path, whose blocks of 4 channels make half bytes, into an input shared with other
// layers: pack_into writes whole words).
static void pack_output_bytes(const float* out, const ConvShape& s, const PackOut& pack) {
  at::parallel_for(0, s.n * s.ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> bytes(s.wo);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / s.ho, oh = row % s.ho;
      for (int64_t c0 = 0; c0 < s.cout; c0 += 8) {
        std::fill(bytes.begin(), bytes.end(), 0);
        for (int64_t l = 0; l < std::min<int64_t>(8, s.cout - c0); ++l) {
          const float* x = out + ((n * s.out_c + s.out_off + c0 + l) * s.ho + oh) * s.wo;
          for (int64_t ow = 0; ow < s.wo; ++ow)
            bytes[ow] |=
                static_cast<uint8_t>(threshold_bit(x[ow], pack.threshold[c0 + l], pack.direction[c0 + l]) << l);
        }
        pack.store(pack.row(n, s.ho, oh, c0), 0, bytes.data(), s.wo);
      }
    }
  });
}

std::tuple<torch::Tensor, torch::Tensor> binary_conv2d(
    torch::Tensor packed, int64_t in_width, torch::Tensor weight, int64_t cin, int64_t cout, int64_t kh, int64_t kw,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, torch::Tensor step_codes,
    torch::Tensor step_params, c10::optional<torch::Tensor> residual, bool out_over_residual,
    c10::optional<torch::Tensor> next_threshold, c10::optional<torch::Tensor> next_direction, int64_t next_groups,
    int64_t next_stride, int64_t next_channels, int64_t next_channel_offset, c10::optional<torch::Tensor> packed_out,
    int64_t out_channels, int64_t out_channel_offset, c10::optional<torch::Tensor> out_into, int64_t isa) {
  TORCH_CHECK(weight.dim() == 6 && weight.scalar_type() == torch::kInt64, "packed weight must be [G,B,KH,KW,WG,8] int64");
  TORCH_CHECK(groups >= 1 && cin % groups == 0 && cout % groups == 0, "the groups must divide the channels");
  const Isa chosen = capped_isa(isa);
  const int64_t word_bytes = packed_word_bytes(cin / groups, isa);
  const auto in_type = word_type(word_bytes);
  TORCH_CHECK(packed.dim() == 6 && packed.scalar_type() == in_type, "packed input must be [G,WG,N,H,SW,WP] ",
              in_type, " words for ", cin / groups, " channels per group on this code path (pack_input with the "
              "same isa packs it so), not ", packed.dim(), "-d ", packed.scalar_type());
  ConvShape s;
  s.word_bytes = word_bytes;
  TORCH_CHECK(packed.size(4) == sw, "the input was packed for stride ", packed.size(4), ", not ", sw);
  s.n = packed.size(2); s.h = packed.size(3); s.groups = groups; s.wg = packed.size(1); s.wp = packed.size(5);
  s.w = in_width;
  s.kh = kh; s.kw = kw; s.sh = sh; s.sw = sw; s.ph = ph; s.pw = pw; s.dh = dh; s.dw = dw;
  s.ho = (s.h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  s.wo = (s.w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  s.cout = cout; s.cout_g = cout / groups; s.cob = weight.size(1) * 8; s.cin_g = cin / groups;
  TORCH_CHECK((s.w + sw - 1) / sw == s.wp, "input width does not match the packed words");
  TORCH_CHECK(packed.size(0) == groups && weight.size(0) == groups && weight.size(4) == s.wg, "layout mismatch");
  TORCH_CHECK(weight.size(2) == kh && weight.size(3) == kw, "weight kernel size mismatch");
  TORCH_CHECK(weight.size(5) == 8 && s.cob >= s.cout_g && s.cob < s.cout_g + 8,
              "weights must be in blocks of 8 output channels, the last padded");
  TORCH_CHECK(s.ho > 0 && s.wo > 0, "the output would be empty");
  TORCH_CHECK(s.cin_g * kh * kw < (int64_t(1) << 24), "a binary layer of ", s.cin_g * kh * kw,
              " inputs per output: sums of 2^24 or more are not exact in float32");
  TORCH_CHECK(step_codes.scalar_type() == torch::kInt64 && step_codes.dim() == 1, "step codes: int64 [steps]");
  const int64_t steps = step_codes.size(0);
  auto codes = step_codes.contiguous();
  auto params = step_params.contiguous();
  const int64_t* code_p = codes.data_ptr<int64_t>();
  bool needs_residual = false;
  int64_t rows = 0;
  for (int64_t i = 0; i < steps; ++i) {
    TORCH_CHECK(code_p[i] >= kMultiply && code_p[i] <= kMultiplyAdd, "unknown epilogue step ", code_p[i]);
    needs_residual |= code_p[i] == kAddResidual;
    rows += code_p[i] == kMultiplyAdd ? 2 : 1;
  }
  TORCH_CHECK(step_params.scalar_type() == torch::kFloat32 && step_params.dim() == 2 && step_params.size(0) == rows &&
              step_params.size(1) == cout, "step params: float32 [", rows, " rows, C_out]");
  const std::vector<int64_t> out_sizes{s.n, cout, s.ho, s.wo};
  torch::Tensor res;
  if (needs_residual) {
    TORCH_CHECK(residual.has_value() && residual->sizes() == out_sizes && residual->scalar_type() == torch::kFloat32,
                "the residual must be float32 ", c10::IntArrayRef(out_sizes), " like the output");
    res = residual->contiguous();
  }
  // over the residual: each element of it is read by the epilogue that then writes the same element
  TORCH_CHECK(!out_over_residual || needs_residual, "the output can go over the residual only when a step adds it");
  // the output: [N, out_channels, Ho, Wo], this layer's channels from out_channel_offset (out_channels > cout:
  // other layers write the others, the first one allocating it, the next ones given it as out_into)
  TORCH_CHECK(out_channel_offset >= 0 && out_channels >= out_channel_offset + cout,
              "the output's channels ", out_channel_offset, " .. ", out_channel_offset + cout - 1,
              " for this layer are not among its ", out_channels);
  TORCH_CHECK(!out_into.has_value() || out_channels != cout, "an output to write into is for a layer that writes "
              "some channels of it");
  TORCH_CHECK(!out_over_residual || out_channels == cout, "the output goes over the residual only when it is "
              "this layer's alone");
  const std::vector<int64_t> all_sizes{s.n, out_channels, s.ho, s.wo};
  torch::Tensor out;
  if (out_over_residual) {
    out = res;
  } else if (out_into.has_value()) {
    out = *out_into;
    TORCH_CHECK(out.sizes() == all_sizes && out.scalar_type() == torch::kFloat32 && out.is_contiguous(),
                "the output to write into must be contiguous float32 ", c10::IntArrayRef(all_sizes));
  } else {
    out = torch::empty(all_sizes, torch::dtype(torch::kFloat32));
  }
  s.out_c = out_channels;
  s.out_off = out_channel_offset;
  // the next binary layer's input, packed by the epilogue: [G', WG', N, Ho, SW', WP'] words, G' and SW' the next
  // layer's groups and stride; every block of 8 output channels must fall in one byte of one group's words
  PackOut pack{};
  torch::Tensor next_t, next_d, bits;
  TORCH_CHECK(next_stride >= 0 && (next_stride > 0 || !packed_out.has_value()),
              "the next layer's packed input is written only for a next layer of stride 1 or more, not ", next_stride);
  if (next_stride > 0) {
    TORCH_CHECK(next_threshold.has_value() && next_direction.has_value(),
                "packing the output needs the next layer's thresholds and directions");
    next_t = next_threshold->contiguous();
    next_d = next_direction->contiguous();
    TORCH_CHECK(next_t.scalar_type() == torch::kFloat32 && next_t.numel() == cout && next_d.scalar_type() == torch::kInt8 &&
                next_d.numel() == cout, "next layer: one float32 threshold and one int8 direction per output channel");
    TORCH_CHECK(next_channel_offset >= 0 && next_channels >= next_channel_offset + cout,
                "the next layer's input channels ", next_channel_offset, " .. ", next_channel_offset + cout - 1,
                " for this layer's outputs are not among its ", next_channels);
    const bool shared = next_channels != cout;  // (other layers write the other channels)
    TORCH_CHECK(!shared || (cout % 8 == 0 && next_channel_offset % 8 == 0),
                "a packed input shared by several layers takes each one's channels in whole bytes: ", cout,
                " channels from channel ", next_channel_offset, " are not");
    TORCH_CHECK(next_groups >= 1 && next_channels % next_groups == 0,
                "the next layer's groups must divide its channels");
    pack.groups = next_groups;
    pack.cin_g = next_channels / next_groups;
    pack.channel_offset = next_channel_offset;
    TORCH_CHECK(groups == 1 || s.cout_g % 8 == 0, "packing the output: the channels per group must be a multiple of 8");
    TORCH_CHECK(next_groups == 1 || pack.cin_g % 8 == 0,
                "packing the output: the next layer's channels per group must be a multiple of 8");
    pack.wg = (pack.cin_g + 63) / 64;
    pack.n = s.n;
    pack.sw = next_stride;
    pack.wp = (s.wo + next_stride - 1) / next_stride;
    pack.wo = s.wo;
    pack.word_bytes = packed_word_bytes(pack.cin_g, isa);
    pack.whole_words = groups == 1 && !shared;
    const auto bits_type = word_type(pack.word_bytes);
    const std::vector<int64_t> bits_sizes{next_groups, pack.wg, s.n, s.ho, next_stride, pack.wp};
    if (packed_out.has_value()) {  // (its words the epilogue does not write are left as they are)
      bits = *packed_out;
      TORCH_CHECK(bits.sizes() == bits_sizes && bits.scalar_type() == bits_type && bits.is_contiguous(),
                  "the packed output must be contiguous ", bits_type, " ", c10::IntArrayRef(bits_sizes),
                  " for the next layer");
    } else {  // zeros where the epilogue writes nothing: the padding of a group's last word (unless whole_words),
              // the phases' words past the row's end, the other layers' channels of a shared input
      const bool written =
          !shared && (pack.whole_words || pack.cin_g % (8 * pack.word_bytes) == 0) && pack.sw * pack.wp == s.wo;
      bits = empty_packed(bits_sizes, bits_type, !written);
    }
    pack.data = static_cast<uint8_t*>(bits.data_ptr());
    pack.threshold = next_t.data_ptr<float>();
    pack.direction = next_d.data_ptr<int8_t>();
  }
  const Epilogue e{code_p, steps, params.data_ptr<float>(), cout, needs_residual ? res.data_ptr<float>() : nullptr,
                   next_stride > 0 ? &pack : nullptr};
  auto in_c = packed.contiguous();
  // an input whose storage does not reach load_reach_words on either side (packed by pack_input or an epilogue for
  // a kernel of more rows, or made elsewhere) is copied into one that does
  const int64_t reach = load_reach_words(s);
  if (in_c.storage_offset() < reach ||
      static_cast<int64_t>(in_c.storage().nbytes()) / word_bytes - in_c.storage_offset() - in_c.numel() < reach) {
    auto copy = empty_packed(in_c.sizes(), in_c.scalar_type(), false, reach);
    copy.copy_(in_c);
    in_c = copy;
  }
  auto w_c = weight.contiguous();
  const void* in = in_c.data_ptr();
  const uint64_t* wt = reinterpret_cast<const uint64_t*>(w_c.data_ptr<int64_t>());
  float* outp = out.data_ptr<float>();
  const int64_t block = chosen == Isa::avx512 ? avx512::kChannels
                        : chosen == Isa::avx2 ? avx2::kChannels : portable::kChannels;
  // the epilogue packs the next layer's input when a block's channels make whole bytes (8 per block); the
  // AVX2 path's blocks of 4 would share bytes between tasks: it packs the output afterwards instead
  const bool pack_after = next_stride > 0 && block % 8 != 0;
  const Epilogue run = pack_after ? Epilogue{e.codes, e.steps, e.params, e.channels, e.residual, nullptr} : e;
  // each group's work in as many parts as threads (Share in conv_kernel.h): by words of 64 output channels when
  // there are enough, else by rows of the batch (or chunks of its flat pixels)
  const int64_t threads = at::get_num_threads(), words = (s.cout_g + 63) / 64;
  const bool by_words = words >= threads;
  if (chosen == Isa::avx512 && runs_flat(s) && avx512::flat_pays(s)) {
    const avx512::BlockPlan plan = avx512::block_plan(s);
    const auto geo = flat_geometry(s, plan);
    const int64_t parts = by_words ? threads : std::min(threads, plan.chunks(s));
    at::parallel_for(0, groups * parts, 1, [&](int64_t begin, int64_t end) {
      avx512::conv_tasks_flat(s, *geo, in, wt, run, outp, parts, by_words, begin, end);
    });
  } else {
    const int64_t parts = by_words ? threads : std::min(threads, s.n * s.ho);
    at::parallel_for(0, groups * parts, 1, [&](int64_t begin, int64_t end) {
      if (chosen == Isa::avx512) avx512::conv_tasks(s, in, wt, run, outp, parts, by_words, begin, end);
      else if (chosen == Isa::avx2) avx2::conv_tasks(s, in, wt, run, outp, parts, by_words, begin, end);
      else portable::conv_tasks(s, in, wt, run, outp, parts, by_words, begin, end);
    });
  }
  if (pack_after && pack.channel_offset == 0 && pack.cin_g * pack.groups == cout && out_channels == cout)
    pack_into(outp, s.n, cout, s.ho, s.wo, pack.threshold, pack.direction, pack.groups, pack.sw, chosen, pack.data);
  else if (pack_after)
    pack_output_bytes(outp, s, pack);
  return {out, bits};
}

}  // namespace bnn
