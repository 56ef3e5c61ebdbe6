// The pooling loops of pooling.cpp, written once over a vector type: pooling.cpp includes this file once per
// code path (portable, AVX2, AVX-512), each time inside its own namespace that defines `struct Ops` (lanes V,
// load / strided loads / store, the max-pool combine, add, div), the SIMD ones inside a `#pragma GCC target`
// region. No include guard on purpose. Expects MaxGeom / AvgGeom (pooling.cpp) in an enclosing namespace.
//
// Exactness (bit-identical to ATen's NCHW CPU kernels, see pooling.cpp):
// - max: combine(acc, v) = (v > acc || isnan(v)) ? v : acc from acc = -inf, in window order (row by row). The
//   combine is associative (the result is the last NaN of the sequence if any, else its first maximum), so a
//   row-by-row reduction (each window row reduced in order, then the rows in order) equals ATen's sequential
//   scan; -inf is its identity on both sides, so -inf columns outside the image change nothing.
// - avg: per output, sum = +0, then sum += x in window order (row by row; no reassociation), then
//   0 + sum / float(divide_factor). The sum is never -0 (it starts at +0), so +0 columns outside the image
//   change nothing either.

// V lanes p[i * S] (S = 1 or 2) or p[i * s] (S = 0: any stride).
template <int S>
inline typename Ops::vec load_strided(const float* p, int64_t s) {
  if constexpr (S == 1) {
    return Ops::load(p);
  } else if constexpr (S == 2) {
    return Ops::load_even(p);
  } else {
    return Ops::gather(p, s);
  }
}

// One padded input row -> its horizontal maxima for output columns [0, owr), owr a multiple of V.
template <int S>
void max_row(const float* padded, float* out, int64_t owr, const MaxGeom& g) {
  for (int64_t ow = 0; ow < owr; ow += Ops::V) {
    const float* p = padded + ow * g.sw;
    typename Ops::vec acc = load_strided<S>(p, g.sw);  // = combine(-inf, first)
    for (int64_t j = 1; j < g.kw; ++j) acc = Ops::max_combine(acc, load_strided<S>(p + j * g.dw, g.sw));
    Ops::store(out + ow, acc);
  }
}

// Work items [begin, end) of max_pool2d: item = plane * chunks + chunk of `rows` output rows. x_end: the end of
// the input, which no load may pass (loads past a row's end are fine otherwise: they only feed lanes >= OW).
template <int S>
void max_items_s(const float* x, const float* x_end, float* y, const MaxGeom& g, int64_t chunks, int64_t rows,
                 int64_t begin, int64_t end) {
  constexpr int64_t V = Ops::V;
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t owr = (g.OW + V - 1) / V * V;
  const int64_t reach = owr * g.sw + (g.kw - 1) * g.dw + 2 * V;  // the loads of a row stay below row + reach
  // rows read in place when every output column's window lies inside the row; else a padded copy: column c of
  // the input at index c + pw, -inf elsewhere
  const bool inside = g.pw == 0 && (g.OW - 1) * g.sw + (g.kw - 1) * g.dw < g.W;
  const int64_t span = std::min(g.H, (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1);  // input rows of a chunk
  std::vector<float> padded(g.pw + g.W + reach, ninf), hmax(span * owr);
  std::vector<char> need(span);
  std::vector<const float*> src(g.kh);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t plane = item / chunks, oa = item % chunks * rows, ob = std::min(g.OH, oa + rows);
    const float* xp = x + plane * g.H * g.W;
    float* yp = y + plane * g.OH * g.OW;
    const int64_t ra = std::max<int64_t>(0, oa * g.sh - g.ph);
    const int64_t rb = std::min(g.H, (ob - 1) * g.sh - g.ph + (g.kh - 1) * g.dh + 1);
    if (ra < rb) {
      std::fill(need.begin(), need.end(), 0);
      for (int64_t oh = oa; oh < ob; ++oh)
        for (int64_t j = 0; j < g.kh; ++j) {
          const int64_t r = oh * g.sh - g.ph + j * g.dh;
          if (r >= ra && r < rb) need[r - ra] = 1;
        }
      for (int64_t r = ra; r < rb; ++r) {
        if (!need[r - ra]) continue;
        const float* row = xp + r * g.W;
        if (!inside || x_end - row < reach) {
          std::memcpy(padded.data() + g.pw, row, g.W * sizeof(float));
          row = padded.data();
        }
        max_row<S>(row, hmax.data() + (r - ra) * owr, owr, g);
      }
    }
    for (int64_t oh = oa; oh < ob; ++oh) {
      int64_t n = 0;
      for (int64_t j = 0; j < g.kh; ++j) {
        const int64_t r = oh * g.sh - g.ph + j * g.dh;
        if (r >= 0 && r < g.H) src[n++] = hmax.data() + (r - ra) * owr;
      }
      float* yr = yp + oh * g.OW;
      for (int64_t ow = 0; ow < g.OW; ow += V) {
        typename Ops::vec acc = Ops::set1(ninf);
        for (int64_t j = 0; j < n; ++j) acc = Ops::max_combine(acc, Ops::load(src[j] + ow));
        Ops::store_n(yr + ow, acc, std::min(V, g.OW - ow));
      }
    }
  }
}

void max_items(const float* x, const float* x_end, float* y, const MaxGeom& g, int64_t chunks, int64_t rows,
               int64_t begin, int64_t end) {
  if (g.sw == 1) {
    max_items_s<1>(x, x_end, y, g, chunks, rows, begin, end);
  } else if (g.sw == 2) {
    max_items_s<2>(x, x_end, y, g, chunks, rows, begin, end);
  } else {
    max_items_s<0>(x, x_end, y, g, chunks, rows, begin, end);
  }
}

// Work items [begin, end) of avg_pool2d; divisor: [OH, owr] float divide factors (1 in the lanes past OW).
template <int S>
void avg_items_s(const float* x, const float* x_end, float* y, const AvgGeom& g, const float* divisor,
                 int64_t chunks, int64_t rows, int64_t begin, int64_t end) {
  constexpr int64_t V = Ops::V;
  const int64_t owr = (g.OW + V - 1) / V * V;
  const int64_t reach = owr * g.sw + g.kw + 2 * V;  // the loads of a row stay below row + reach
  // rows read in place when every output column's window lies inside the row; else a padded copy: column c of
  // the input at index c + pw, +0 elsewhere
  const bool inside = g.pw == 0 && (g.OW - 1) * g.sw + g.kw - 1 < g.W;
  const int64_t len = g.pw + g.W + reach;
  const int64_t span = std::min(g.H, (rows - 1) * g.sh + g.kh);  // input rows of a chunk
  std::vector<float> padded(span * len, 0.0f);
  std::vector<const float*> row_at(span);
  const typename Ops::vec zero = Ops::set1(0.0f);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t plane = item / chunks, oa = item % chunks * rows, ob = std::min(g.OH, oa + rows);
    const float* xp = x + plane * g.H * g.W;
    float* yp = y + plane * g.OH * g.OW;
    const int64_t ra = std::max<int64_t>(0, oa * g.sh - g.ph);
    std::fill(row_at.begin(), row_at.end(), nullptr);
    for (int64_t oh = oa; oh < ob; ++oh) {
      const int64_t r0 = std::max<int64_t>(oh * g.sh - g.ph, 0);
      const int64_t r1 = std::min(oh * g.sh - g.ph + g.kh, g.H);
      float* yr = yp + oh * g.OW;
      if (r0 >= r1) {  // no input row in the window: ATen leaves its 0
        std::fill(yr, yr + g.OW, 0.0f);
        continue;
      }
      for (int64_t r = r0; r < r1; ++r)
        if (!row_at[r - ra]) {
          const float* row = xp + r * g.W;
          if (!inside || x_end - row < reach) {
            float* copy = padded.data() + (r - ra) * len;
            std::memcpy(copy + g.pw, row, g.W * sizeof(float));
            row = copy;
          }
          row_at[r - ra] = row;
        }
      const float* dr = divisor + oh * owr;
      for (int64_t ow = 0; ow < g.OW; ow += V) {
        typename Ops::vec acc = zero;
        for (int64_t r = r0; r < r1; ++r) {
          const float* p = row_at[r - ra] + ow * g.sw;
          for (int64_t j = 0; j < g.kw; ++j) acc = Ops::add(acc, load_strided<S>(p + j, g.sw));
        }
        acc = Ops::add(zero, Ops::div(acc, Ops::load(dr + ow)));
        Ops::store_n(yr + ow, acc, std::min(V, g.OW - ow));
      }
      for (int64_t ow : g.empty_columns) yr[ow] = 0.0f;  // never in practice (a window always meets the image)
    }
  }
}

void avg_items(const float* x, const float* x_end, float* y, const AvgGeom& g, const float* divisor,
               int64_t chunks, int64_t rows, int64_t begin, int64_t end) {
  if (g.sw == 1) {
    avg_items_s<1>(x, x_end, y, g, divisor, chunks, rows, begin, end);
  } else if (g.sw == 2) {
    avg_items_s<2>(x, x_end, y, g, divisor, chunks, rows, begin, end);
  } else {
    avg_items_s<0>(x, x_end, y, g, divisor, chunks, rows, begin, end);
  }
}
