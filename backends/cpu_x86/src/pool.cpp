// Separable evaluation: for each output row, the valid window rows are first combined into one
// row buffer, then the window columns at every start position, both contiguous vectorisable
// passes; each output column picks its start (windows clipped by the edge combine their taps). This reads each input row kh times instead of kh*kw
// times through a bounds check per tap.
#include "pool.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace walle {

namespace {

// Valid taps t in [lo, hi) of a window starting at `start` with dilation d over [0, size).
void tap_range(int64_t start, int64_t d, int64_t taps, int64_t size, int64_t& lo, int64_t& hi) {
  lo = start >= 0 ? 0 : (-start + d - 1) / d;
  hi = start > size - 1 ? 0 : std::min(taps, (size - 1 - start) / d + 1);
  hi = std::max(hi, lo);
}

// Taps of a window starting at `start` that fall inside the padded extent [-pad_lo, size + pad_hi).
int64_t padded_taps(int64_t start, int64_t d, int64_t taps, int64_t size, int64_t pad_lo, int64_t pad_hi) {
  int64_t lo, hi;
  tap_range(start + pad_lo, d, taps, size + pad_lo + pad_hi, lo, hi);
  return hi - lo;
}

// Max that lets a NaN win and stay, as NumPy's maximum does (two plain selects, so loops over
// it vectorise).
inline float nan_max(float acc, float v) {
  const float r = v > acc ? v : acc;
  return v != v ? v : r;
}

}  // namespace

void pool2d_op(const PoolParams& p, const float* x, float* y, ThreadPool& pool) {
  const int64_t planes = p.n * p.c;
  // a few planes per task: one row buffer per task, and enough tasks to balance two workers
  const int64_t chunk = std::max<int64_t>(1, planes / (4 * pool.threads()));
  const int64_t tasks = (planes + chunk - 1) / chunk;
  pool.parallel_for(tasks, [&](int64_t task, int) {
    std::vector<float> row(static_cast<size_t>(p.w));
    // window combined along x for every start column whose window lies inside the row (a
    // contiguous, vectorisable pass even when sw > 1: the strided pick comes after)
    const int64_t span = (p.kw - 1) * p.dw + 1;
    std::vector<float> full(static_cast<size_t>(std::max<int64_t>(0, p.w - span + 1)));
    // valid column taps [jlo, jhi) and the average's divisor part per output column, shared by all rows
    std::vector<int64_t> jlo(static_cast<size_t>(p.ow)), jhi(static_cast<size_t>(p.ow)), count_x(static_cast<size_t>(p.ow));
    for (int64_t ox = 0; ox < p.ow; ++ox) {
      const int64_t x0 = ox * p.sw - p.pl;
      tap_range(x0, p.dw, p.kw, p.w, jlo[ox], jhi[ox]);
      count_x[ox] = p.count_include_pad ? padded_taps(x0, p.dw, p.kw, p.w, p.pl, p.pr) : jhi[ox] - jlo[ox];
    }
    const float init = p.is_max ? -std::numeric_limits<float>::infinity() : 0.f;
    for (int64_t plane = task * chunk; plane < std::min(planes, (task + 1) * chunk); ++plane) {
      const float* in = x + plane * p.h * p.w;
      float* out = y + plane * p.oh * p.ow;
      for (int64_t oy = 0; oy < p.oh; ++oy) {
        const int64_t y0 = oy * p.sh - p.pt;
        int64_t ilo, ihi;
        tap_range(y0, p.dh, p.kh, p.h, ilo, ihi);
        std::fill(row.begin(), row.end(), init);
        for (int64_t i = ilo; i < ihi; ++i) {
          const float* src = in + (y0 + i * p.dh) * p.w;
          if (p.is_max) {
            for (int64_t ix = 0; ix < p.w; ++ix) row[ix] = nan_max(row[ix], src[ix]);
          } else {
            for (int64_t ix = 0; ix < p.w; ++ix) row[ix] += src[ix];
          }
        }
        const int64_t count_y = p.count_include_pad ? padded_taps(y0, p.dh, p.kh, p.h, p.pt, p.pb) : ihi - ilo;
        float* orow = out + oy * p.ow;
        const int64_t nfull = static_cast<int64_t>(full.size());
        for (int64_t x = 0; x < nfull; ++x) full[x] = row[x];
        for (int64_t j = 1; j < p.kw; ++j) {
          const float* shifted = row.data() + j * p.dw;
          if (p.is_max) {
            for (int64_t x = 0; x < nfull; ++x) full[x] = nan_max(full[x], shifted[x]);
          } else {
            for (int64_t x = 0; x < nfull; ++x) full[x] += shifted[x];
          }
        }
        for (int64_t ox = 0; ox < p.ow; ++ox) {
          const int64_t x0 = ox * p.sw - p.pl;
          float acc = init;
          if (jlo[ox] == 0 && jhi[ox] == p.kw) {
            acc = full[x0];
          } else if (p.is_max) {
            for (int64_t j = jlo[ox]; j < jhi[ox]; ++j) acc = nan_max(acc, row[x0 + j * p.dw]);
          } else {
            for (int64_t j = jlo[ox]; j < jhi[ox]; ++j) acc += row[x0 + j * p.dw];
          }
          if (!p.is_max) acc /= static_cast<float>(std::max<int64_t>(count_y * count_x[ox], 1));
          orow[ox] = acc;
        }
      }
    }
  });
}

}  // namespace walle
