// The packed binary convolution, written once over a small SIMD vocabulary and included by
// binary_conv.cpp into one namespace per SIMD code path (AVX-512, AVX2), each under its own
// `#pragma GCC target`. No include guard: it is meant to be included several times.
//
// The enclosing namespace provides: Vec (kLanes 64-bit lanes), Mask, kPixelVectors (the register block
// is kPixelVectors vectors of kLanes output pixels x kChannels output channels), lane_mask, macc (add where the
// mask is on), vzero, vbcast, vxor, vpopcnt, vload, vsub, vadd, store_i32 (kLanes int64 -> int32); and, if it
// defines BNN_DIRECT_EPILOGUE, finish_block, which runs the epilogue on a register block and writes the output
// and the next layer's bits (else the sums go to a tile, and finish_tile runs the epilogue on it); if it defines
// BNN_BYTE_COUNTS, byte_popcounts (the popcount of each byte), add_bytes (add bytes where the mask is on) and
// sum_bytes (a lane's bytes summed), for dot_block_bytes; and, if it defines BNN_HALF_WORDS, dot_block_half<P>
// (dot_block's arguments and sums, for groups of at most 32 input channels) with blocks of up to
// kHalfPixelVectors vectors, in pairs.
//
// Vector lanes run over output pixels of one row, so the sums of one output channel are contiguous, as
// the NCHW output is: no transposition before the epilogue. The packed input is phase-split by the stride
// (binary_conv.cpp): for every tap, the words of consecutive output pixels are consecutive words. Lanes
// whose tap falls in the zero padding are masked out of the sum, and their count of valid taps is smaller.
//
// conv_tasks runs a thread's share of the layer (Share) row by row; on the AVX-512 path, a convolution of stride
// 1 whose output is as large as its input runs in chunks of output pixels flat over the batch (conv_tasks_flat).

#ifndef BNN_DIRECT_EPILOGUE
// The sums of a register block, n_valid - 2 * popcounts, into the task's int32 tile (finish_tile runs the
// epilogue over the whole tile afterwards).
template <int P>
inline void finish_block(Vec (&acc)[P][kChannels], const int64_t* n_valid, const BlockOut& out) {
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const Vec nv = vload(reinterpret_cast<const uint64_t*>(n_valid + p * kLanes));
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c)
      store_i32(out.tile + c * out.tile_stride + p * kLanes, vsub(nv, vadd(acc[p][c], acc[p][c])));
  }
}
#endif

// Sums of kChannels output channels for P vectors of pixels over `taps` taps of `wg` words (64-bit: `in` is
// const uint64_t*). The lanes of vector p that count for tap t: masks[p * mask_stride + tap_mask[t]] (bytes).
// Whole vectors are loaded, lanes outside the input included (the input's storage reaches on: load_reach_words),
// and the lanes are masked in the sums alone: masked loads took an ALU operation more each (with them, 128@28,
// 256@14, 512@7 and 128@56 ran 5-6.4% slower, 32@112 2-3%).
template <int P>
inline void dot_block(const void* in, const int64_t* tap_in, const int64_t* tap_w, const int* tap_mask,
                      int64_t taps, int64_t wg, int64_t in_word_stride, int64_t w_word_stride, const uint64_t* wt,
                      const void* mask_data, int64_t mask_stride, const int64_t* n_valid, const BlockOut& out) {
  const uint8_t* const masks = static_cast<const uint8_t*>(mask_data);
  Vec acc[P][kChannels];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int c = 0; c < kChannels; ++c) acc[p][c] = vzero();
  for (int64_t t = 0; t < taps; ++t) {
    Mask m[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) m[p] = lane_mask(masks[p * mask_stride + tap_mask[t]]);
    const uint64_t* a = static_cast<const uint64_t*>(in) + tap_in[t];
    const uint64_t* w = wt + tap_w[t];
    for (int64_t k = 0; k < wg; ++k) {
      Vec x[P];
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) x[p] = vload(a + k * in_word_stride + p * kLanes);
      const uint64_t* wk = w + k * w_word_stride;
#pragma GCC unroll 16
      for (int c = 0; c < kChannels; ++c) {
        const Vec wv = vbcast(wk[c]);
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) acc[p][c] = macc(acc[p][c], m[p], vpopcnt(vxor(x[p], wv)));
      }
    }
  }
  finish_block<P>(acc, n_valid, out);
}

#ifdef BNN_BYTE_COUNTS
// dot_block for taps of two or more words, on a path whose popcounts come as byte counts (byte_popcounts, at most 8
// a word): the counts kept in bytes across up to 31 words, summed into the 64-bit lanes (sum_bytes) every 31 words
// and at the end, rather than at every word. (AVX2, paired A/B: with two or more words a tap, 128@28, 256@14 and
// 512@7 ran 7-10% faster; with one, the 8 more accumulators in 16 vector registers made 64@56's loop spill, 2-3%
// slower.)
template <int P>
inline void dot_block_bytes(const void* in, const int64_t* tap_in, const int64_t* tap_w, const int* tap_mask,
                            int64_t taps, int64_t wg, int64_t in_word_stride, int64_t w_word_stride, const uint64_t* wt,
                            const void* mask_data, int64_t mask_stride, const int64_t* n_valid, const BlockOut& out) {
  const uint8_t* const masks = static_cast<const uint8_t*>(mask_data);
  constexpr int kWordsPerByte = 31;
  Vec acc[P][kChannels], counts[P][kChannels];
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < kChannels; ++c) acc[p][c] = counts[p][c] = vzero();
  int pending = 0;  // words counted in the bytes
  const auto flush = [&] {
    for (int p = 0; p < P; ++p)
      for (int c = 0; c < kChannels; ++c) {
        acc[p][c] = vadd(acc[p][c], sum_bytes(counts[p][c]));
        counts[p][c] = vzero();
      }
    pending = 0;
  };
  for (int64_t t = 0; t < taps; ++t) {
    Mask m[P];
    for (int p = 0; p < P; ++p) m[p] = lane_mask(masks[p * mask_stride + tap_mask[t]]);
    const uint64_t* a = static_cast<const uint64_t*>(in) + tap_in[t];
    const uint64_t* w = wt + tap_w[t];
    for (int64_t k = 0; k < wg; ++k) {
      if (pending == kWordsPerByte) flush();
      ++pending;
      Vec x[P];
      for (int p = 0; p < P; ++p) x[p] = vload(a + k * in_word_stride + p * kLanes);
      const uint64_t* wk = w + k * w_word_stride;
      for (int c = 0; c < kChannels; ++c) {
        const Vec wv = vbcast(wk[c]);
        for (int p = 0; p < P; ++p) counts[p][c] = add_bytes(counts[p][c], m[p], byte_popcounts(vxor(x[p], wv)));
      }
    }
  }
  flush();
  finish_block<P>(acc, n_valid, out);
}
#endif

using DotBlockFn = void (*)(const void*, const int64_t*, const int64_t*, const int*, int64_t, int64_t, int64_t,
                            int64_t, const uint64_t*, const void*, int64_t, const int64_t*, const BlockOut&);

// dot_block for P vectors (P <= kPixelVectors), at index P
static_assert(kPixelVectors <= 4, "extend the table below");
constexpr DotBlockFn kDotBlock[] = {nullptr, &dot_block<1>, &dot_block<(2 <= kPixelVectors ? 2 : 1)>,
                                    &dot_block<(3 <= kPixelVectors ? 3 : 1)>, &dot_block<(4 <= kPixelVectors ? 4 : 1)>};
#ifdef BNN_BYTE_COUNTS
constexpr DotBlockFn kDotBlockBytes[] = {nullptr, &dot_block_bytes<1>, &dot_block_bytes<(2 <= kPixelVectors ? 2 : 1)>,
                                         &dot_block_bytes<(3 <= kPixelVectors ? 3 : 1)>,
                                         &dot_block_bytes<(4 <= kPixelVectors ? 4 : 1)>};
#endif
#ifdef BNN_HALF_WORDS
static_assert(kHalfPixelVectors <= 6, "extend the table below");
constexpr DotBlockFn kDotBlockHalf[] = {nullptr,
                                        &dot_block_half<1>,
                                        &dot_block_half<2>,
                                        &dot_block_half<3>,
                                        &dot_block_half<4>,
                                        &dot_block_half<5>,
                                        &dot_block_half<6>};
#endif

#ifndef BNN_DIRECT_EPILOGUE
// The epilogue of a task's tile (channels x wo_pad sums): float(sum), then the steps in order, each over
// the whole tile (one dispatch per step, contiguous loops that vectorize), rounded as the torch ops they
// replace (no fused multiply-add: -ffp-contract=off); then each channel's row is written out.
inline void finish_tile(const Epilogue& e, const int32_t* tile, float* f, int64_t wo_pad, int64_t wo,
                        int64_t channels, int64_t co0, float* out0, const float* residual0, int64_t channel_stride,
                        uint8_t* bits) {
  const int64_t n = channels * wo_pad;
  for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(tile[i]);
  const float* prm = e.params + co0;
  for (int64_t s = 0; s < e.steps; ++s, prm += e.channels) {
    switch (e.codes[s]) {
      case kMultiply:
        for (int64_t l = 0; l < channels; ++l) {
          float* row = f + l * wo_pad;
          const float p = prm[l];
          for (int64_t i = 0; i < wo_pad; ++i) row[i] = row[i] * p;
        }
        break;
      case kAdd:
        for (int64_t l = 0; l < channels; ++l) {
          float* row = f + l * wo_pad;
          const float p = prm[l];
          for (int64_t i = 0; i < wo_pad; ++i) row[i] = row[i] + p;
        }
        break;
      case kAddResidual:
        for (int64_t l = 0; l < channels; ++l) {
          float* row = f + l * wo_pad;
          const float* r = residual0 + l * channel_stride;
          for (int64_t i = 0; i < wo; ++i) row[i] = row[i] + r[i];
        }
        break;
      case kPReLU:
        for (int64_t l = 0; l < channels; ++l) {
          float* row = f + l * wo_pad;
          const float p = prm[l];
          for (int64_t i = 0; i < wo_pad; ++i) row[i] = row[i] > 0.0f ? row[i] : p * row[i];
        }
        break;
      case kMultiplyAdd:  // std::fma: one rounding, in hardware or in the C library
        for (int64_t l = 0; l < channels; ++l) {
          float* row = f + l * wo_pad;
          const float a = prm[l], b = prm[e.channels + l];
          for (int64_t i = 0; i < wo_pad; ++i) row[i] = std::fma(row[i], a, b);
        }
        prm += e.channels;
        break;
    }
  }
  for (int64_t l = 0; l < channels; ++l) std::copy(f + l * wo_pad, f + l * wo_pad + wo, out0 + l * channel_stride);
  if (bits) {  // the next layer's input bits: one byte of these (at most 8) channels per pixel
    const PackOut& pk = *e.pack;
    uint8_t bytes[64];
    for (int64_t i0 = 0; i0 < wo; i0 += 64) {
      const int64_t count = std::min<int64_t>(64, wo - i0);
      for (int64_t i = 0; i < count; ++i) {
        unsigned byte = 0;
        for (int64_t l = 0; l < channels; ++l)
          byte |= static_cast<unsigned>(threshold_bit(f[l * wo_pad + i0 + i], pk.threshold[co0 + l],
                                                      pk.direction[co0 + l])) << l;
        bytes[i] = static_cast<uint8_t>(byte);
      }
      pk.store(bits, i0, bytes, count);
    }
  }
}
#endif

// The register blocks of a run of pixel vectors (Blocking): dot_block's, or for groups of at most 32 input
// channels the half-word path's, whose vectors of 16 lanes are units of two pixel vectors.
struct BlockPlan : Blocking {
  const DotBlockFn* fns;  // the dot function of a block of P vectors: fns[P]
};
inline BlockPlan block_plan(const ConvShape& s) {
#ifdef BNN_HALF_WORDS
  if (half_words(s.cin_g)) return {{kLanes, 2, kHalfPixelVectors / 2}, kDotBlockHalf};
#endif
#ifdef BNN_BYTE_COUNTS
  if (s.wg >= 2) return {{kLanes, 1, kPixelVectors}, kDotBlockBytes};
#endif
  (void)s;
  return {{kLanes, 1, kPixelVectors}, kDotBlock};
}

// A thread's share of a convolution: part = g * parts + r of group g's work, split `parts` ways, by words of 64
// output channels (r: a range of words, all units) or by units (r: a range of units, all channels); units are
// the output rows of the batch, n * Ho + oh (conv_tasks), or chunks of its flat pixels (conv_tasks_flat). Either
// way, no two threads write the same words of the next layer's packed input (8 channels a byte, 64 a word);
// binary_conv2d splits by words when there are at least as many as threads: then each thread reads only its
// channels' weights. A share runs one block of kChannels output channels after the other, each over all its
// units: the output and residual rows are read and written as sequential streams, and the block's weights stay
// in cache.
struct Share {
  int64_t g, block_begin, block_end, unit_begin, unit_end;
  Share(int64_t part, int64_t parts, bool by_words, int64_t blocks, int64_t units) : g(part / parts) {
    const int64_t r = part % parts, per_word = 64 / kChannels, words = (blocks + per_word - 1) / per_word;
    block_begin = by_words ? std::min(blocks, r * words / parts * per_word) : 0;
    block_end = by_words ? std::min(blocks, (r + 1) * words / parts * per_word) : blocks;
    unit_begin = by_words ? 0 : r * units / parts;
    unit_end = by_words ? units : (r + 1) * units / parts;
  }
};

// Parts [part_begin, part_end) of the convolution in rows (Share).
inline void conv_tasks(const ConvShape& s, const void* in, const uint64_t* wt, const Epilogue& e, float* out,
                       int64_t parts, bool by_words, int64_t part_begin, int64_t part_end) {
  const int64_t blocks = (s.cob + kChannels - 1) / kChannels;
  const int64_t vectors = (s.wo + kLanes - 1) / kLanes, wo_pad = vectors * kLanes;
  const int64_t ktaps = s.kh * s.kw;
  const BlockPlan plan = block_plan(s);
  // per unit of pixel vectors (plan.mask_lanes() lanes) and kernel column: the lanes whose input column is
  // inside the input
  const int64_t mask_lanes = plan.mask_lanes(), mask_units = (s.wo + mask_lanes - 1) / mask_lanes;
  const int64_t mask_size = plan.mask_size();
  std::vector<uint8_t> masks(mask_units * s.kw * mask_size);
  std::vector<int64_t> col_offset(s.kw), valid_cols(std::max(wo_pad, mask_units * mask_lanes), 0);
  for (int64_t j = 0; j < s.kw; ++j) {
    const int64_t off = j * s.dw - s.pw;
    const int64_t phase = ((off % s.sw) + s.sw) % s.sw;
    col_offset[j] = phase * s.wp + (off - phase) / s.sw;  // word of output pixel 0 in the phase-split row
    for (int64_t u = 0; u < mask_units; ++u) {
      unsigned m = 0;
      for (int64_t l = 0; l < mask_lanes; ++l) {
        const int64_t ow = u * mask_lanes + l, iw = ow * s.sw + off;
        if (ow < s.wo && iw >= 0 && iw < s.w) {
          m |= 1u << l;
          ++valid_cols[ow];
        }
      }
      set_mask(masks.data(), u * s.kw + j, m, mask_size);
    }
  }
  // valid taps x channels of each output pixel, for each count of valid kernel rows (fixed per row)
  // (and as floats: exact, below 2^24, checked by binary_conv2d)
  std::vector<int64_t> n_valid((s.kh + 1) * wo_pad);
  std::vector<float> n_valid_f((s.kh + 1) * wo_pad);
  for (int64_t r = 0; r <= s.kh; ++r)
    for (int64_t ow = 0; ow < wo_pad; ++ow) {
      n_valid[r * wo_pad + ow] = r * valid_cols[ow] * s.cin_g;
      n_valid_f[r * wo_pad + ow] = static_cast<float>(n_valid[r * wo_pad + ow]);
    }
  const int64_t row_words = s.sw * s.wp;         // one row of a plane (one image's, one group's, one word's)
  const int64_t word_stride = s.n * s.h * row_words;  // from the plane of one word of 64 channels to the next
  // The taps of an output row oh: those of its kernel rows inside the input, rows i0 .. i0 + rows - 1. They
  // depend on (i0, rows) alone, a few distinct pairs (all rows; fewer at the top and the bottom): list l is
  // list_rows[l] kernel rows, its taps entries l * ktaps ... of tap_in (words on from input row oh * sh - ph +
  // i0 * dh of the image), tap_w (of the weights) and tap_col (the tap's kernel column, the index of its masks).
  std::vector<int64_t> row_list(s.ho), row_first(s.ho), list_first, list_rows, tap_in, tap_w;
  std::vector<int> tap_col;
  for (int64_t oh = 0; oh < s.ho; ++oh) {
    int64_t i0 = 0, rows = 0;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      if (ih < 0 || ih >= s.h) continue;
      if (rows++ == 0) i0 = i;
    }
    int64_t list = 0;
    while (list < static_cast<int64_t>(list_rows.size()) && (list_first[list] != i0 || list_rows[list] != rows)) ++list;
    if (list == static_cast<int64_t>(list_rows.size())) {
      list_first.push_back(i0);
      list_rows.push_back(rows);
      tap_in.resize((list + 1) * ktaps);
      tap_w.resize((list + 1) * ktaps);
      tap_col.resize((list + 1) * ktaps);
      for (int64_t i = i0, t = list * ktaps; i < i0 + rows; ++i)
        for (int64_t j = 0; j < s.kw; ++j, ++t) {
          tap_in[t] = (i - i0) * s.dh * row_words + col_offset[j];
          tap_w[t] = (i * s.kw + j) * s.wg * 8;
          tap_col[t] = static_cast<int>(j);
        }
    }
    row_list[oh] = list;
    row_first[oh] = oh * s.sh - s.ph + i0 * s.dh;
  }
#ifdef BNN_DIRECT_EPILOGUE
  int32_t* const tile_data = nullptr;  // the epilogue runs on the register blocks: no tile
#else
  std::vector<int32_t> tile(kChannels * wo_pad);
  std::vector<float> ftile(kChannels * wo_pad);
  int32_t* const tile_data = tile.data();
#endif
  const std::vector<Block> row_blocks = plan.split(vectors);
  const int64_t pack_row_bytes = e.pack ? e.pack->sw * e.pack->wp * e.pack->word_bytes : 0;
  for (int64_t part = part_begin; part < part_end; ++part) {
    const Share share(part, parts, by_words, blocks, s.n * s.ho);
    const int64_t g = share.g;
    for (int64_t b = share.block_begin; b < share.block_end; ++b) {
      const int64_t c0 = b * kChannels;
      const int64_t channels = std::min<int64_t>(kChannels, s.cout_g - c0);
      if (channels <= 0) continue;
      uint8_t* const pack_base = e.pack ? e.pack->row(0, s.ho, 0, g * s.cout_g + c0) : nullptr;  // (rows of all images)
      int64_t n = share.unit_begin / s.ho, oh = share.unit_begin % s.ho;  // (counted on from row to row)
      for (int64_t unit = share.unit_begin; unit < share.unit_end; ++unit, ++oh) {
        if (oh == s.ho) {
          oh = 0;
          ++n;
        }
        const int64_t list = row_list[oh], rows = list_rows[list], taps = rows * s.kw, first = list * ktaps;
        // (the words of the row's first kernel row inside the input; with none inside, of the plane's first row)
        const int64_t in_row = g * s.wg * word_stride + (rows > 0 ? (n * s.h + row_first[oh]) * row_words : 0);
        const int64_t* row_valid = n_valid.data() + rows * wo_pad;
        const float* row_valid_f = n_valid_f.data() + rows * wo_pad;
        const int64_t co0 = g * s.cout_g + c0, offset = ((n * s.out_c + s.out_off + co0) * s.ho + oh) * s.wo;
        const int64_t residual_offset = ((n * s.cout + co0) * s.ho + oh) * s.wo;
        uint8_t* const bits_row = e.pack ? pack_base + unit * pack_row_bytes : nullptr;
        const uint64_t* const wt_block = wt + s.weight_offset(g, c0);
        for (const Block& blk : row_blocks) {
          const int64_t ow0 = blk.first_vector * kLanes;
          const BlockOut block{&e, co0, channels, s.ho * s.wo, s.wo - ow0, ow0, row_valid_f + ow0, out + offset + ow0,
                               e.residual ? e.residual + residual_offset + ow0 : nullptr,
                               tile_data ? tile_data + ow0 : nullptr, wo_pad, bits_row, 0, 0, 0, 0, 0};
          plan.fns[blk.vectors](s.input_word(in, in_row + ow0), tap_in.data() + first, tap_w.data() + first,
                                tap_col.data() + first, taps, s.wg, word_stride, 8, wt_block,
                                masks.data() + blk.first_unit * s.kw * mask_size, s.kw, row_valid + ow0, block);
        }
#ifndef BNN_DIRECT_EPILOGUE
        finish_tile(e, tile.data(), ftile.data(), wo_pad, s.wo, channels, co0, out + offset,
                    e.residual ? e.residual + residual_offset : nullptr, s.ho * s.wo, bits_row);
#endif
      }
    }
  }
}

#ifdef BNN_DIRECT_EPILOGUE
// Whether conv_tasks_flat pays: rows that leave lanes of their last vector (of 16 lanes on the half-word path)
// empty; rows that leave a block of less than the largest at their end (on the 64-bit path 56 pixels, 2 + 2 + 2 + 1
// vectors; on the half-word path 112 pixels, 3 + 2 + 2 units), but for the half-word path's 1x1 kernels; and the
// 64-bit path's 1x1 kernels. (Flat on the 64-bit path: 3x3 64@56 and 128@56 3.3% faster at batch 1 and 1.8-2.5% at
// batch 8, 4.7-6.5% with a four-step epilogue, 1.7-4.1% on two threads; rows of 112, whose blocks are whole, 6%
// slower; 1x1 rows of 56 pixels 3.6-5.7% faster. On the half-word path: 1x1 at 112 1.4% faster at batch 1, 4.7%
// slower at 8; 3x3 at 112, with the whole blocks' inline epilogue, 2.5-3.5% faster at batch 1, 8% with a four-step
// epilogue, 3-4% on two threads, 0-1% at batch 8.)
inline bool flat_pays(const ConvShape& s) {
  const BlockPlan plan = block_plan(s);
  const bool half_words = plan.unit == 2, one_by_one = s.kh * s.kw == 1;
  const bool empty_lanes = s.wo % (plan.unit * kLanes) != 0;
  const bool partial_blocks = s.wo % (kLanes * plan.unit * plan.max_units) != 0;
  return empty_lanes || (half_words ? partial_blocks && !one_by_one : partial_blocks || one_by_one);
}

// Stride 1, output as large as the input (flat_geometry): the output pixels flat over the batch, q = (n * Ho +
// oh) * Wo + ow, whose words of tap (i, j) are those of input pixel q + (i * dh - ph) * W + j * dw - pw. The
// vectors run on across rows and images, so a row of 28, 14 or 7 pixels leaves no lane empty at its end; the
// lanes whose tap falls outside their own image are masked per vector and tap (FlatGeometry). Parts
// [part_begin, part_end) (Share), whose units are chunks of pixels (two register blocks each).
inline void conv_tasks_flat(const ConvShape& s, const FlatGeometry& geo, const void* in, const uint64_t* wt,
                            const Epilogue& e, float* out, int64_t parts, bool by_words, int64_t part_begin,
                            int64_t part_end) {
  const int64_t blocks = (s.cob + kChannels - 1) / kChannels, ktaps = s.kh * s.kw;
  const int64_t image_pixels = s.ho * s.wo, pixels = s.n * image_pixels;
  const BlockPlan plan = block_plan(s);
  const int64_t chunk_pixels = plan.chunk_vectors() * kLanes, chunks = plan.chunks(s);
  const int64_t chunk_units = plan.chunk_vectors() / plan.unit;
  const int64_t plane = s.n * s.h * s.w;  // words of one word of 64 channels (sw = 1: wp = w)
  for (int64_t part = part_begin; part < part_end; ++part) {
    const Share share(part, parts, by_words, blocks, chunks);
    const int64_t g = share.g, chunk_begin = share.unit_begin, chunk_end = share.unit_end;
    const void* const in_g = s.input_word(in, g * s.wg * plane);
    for (int64_t b = share.block_begin; b < share.block_end; ++b) {
      const int64_t c0 = b * kChannels;
      const int64_t channels = std::min<int64_t>(kChannels, s.cout_g - c0);
      if (channels <= 0) continue;
      const int64_t co0 = g * s.cout_g + c0;
      uint8_t* const bits = e.pack ? e.pack->row(0, s.ho, 0, co0) : nullptr;
      const uint64_t* const wt_block = wt + s.weight_offset(g, c0);
      // the image of the chunk's first pixel, and that pixel's index in it (counted on from chunk to chunk)
      int64_t image = chunk_begin * chunk_pixels / image_pixels, local = chunk_begin * chunk_pixels % image_pixels;
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t q_begin = chunk * chunk_pixels;
        const std::vector<Block>& chunk_blocks = chunk + 1 < chunks ? geo.full : geo.last;
        for (size_t i = 0; i < chunk_blocks.size(); ++i) {
          const Block& blk = chunk_blocks[i];
          const int64_t list = geo.block_list[chunk * geo.blocks_per_chunk + static_cast<int64_t>(i)];
          const int64_t first = list * ktaps;
          const int64_t q0 = q_begin + blk.first_vector * kLanes;
          int64_t block_image = image, block_local = local + blk.first_vector * kLanes;
          while (block_local >= image_pixels) {
            block_local -= image_pixels;
            ++block_image;
          }
          const BlockOut block{&e, co0, channels, image_pixels, pixels - q0, q0, geo.n_valid_f.data() + q0,
                               out + (s.out_off + co0) * image_pixels,
                               e.residual ? e.residual + co0 * image_pixels : nullptr, nullptr, 0, bits, image_pixels,
                               s.out_c * image_pixels, block_image, block_local, s.cout * image_pixels};
          const uint8_t* const masks =
              geo.masks.data() + (chunk * chunk_units + blk.first_unit) * ktaps * geo.mask_bytes;
          plan.fns[blk.vectors](s.input_word(in_g, q0), geo.tap_in.data() + first, geo.tap_w.data() + first,
                                geo.tap_mask.data() + first, geo.list_taps[list], s.wg, plane, 8, wt_block, masks,
                                ktaps, nullptr, block);
        }
        local += chunk_pixels;  // the next chunk's first pixel
        while (local >= image_pixels) {
          local -= image_pixels;
          ++image;
        }
      }
    }
  }
}
#endif
