#include "pool.hpp"

#include <algorithm>
#include <limits>

namespace walle {

void pool2d_op(const PoolParams& p, const float* x, float* y, ThreadPool& pool) {
  pool.parallel_for(p.n * p.c, [&](int64_t plane, int) {
    const float* in = x + plane * p.h * p.w;
    float* out = y + plane * p.oh * p.ow;
    for (int64_t oy = 0; oy < p.oh; ++oy) {
      const int64_t y0 = oy * p.sh - p.pt;
      for (int64_t ox = 0; ox < p.ow; ++ox) {
        const int64_t x0 = ox * p.sw - p.pl;
        float acc = p.is_max ? -std::numeric_limits<float>::infinity() : 0.f;
        int64_t inside = 0, padded_y = 0, padded_x = 0;
        for (int64_t i = 0; i < p.kh; ++i) {
          const int64_t iy = y0 + i * p.dh;
          if (iy >= -p.pt && iy < p.h + p.pb) ++padded_y;
          if (iy < 0 || iy >= p.h) continue;
          for (int64_t j = 0; j < p.kw; ++j) {
            const int64_t ix = x0 + j * p.dw;
            if (ix < 0 || ix >= p.w) continue;
            const float v = in[iy * p.w + ix];
            if (p.is_max) acc = (v > acc || v != v) ? v : acc;
            else acc += v;
            ++inside;
          }
        }
        if (!p.is_max) {
          int64_t count = inside;
          if (p.count_include_pad) {
            for (int64_t j = 0; j < p.kw; ++j) {
              const int64_t ix = x0 + j * p.dw;
              if (ix >= -p.pl && ix < p.w + p.pr) ++padded_x;
            }
            count = padded_y * padded_x;
          }
          acc /= static_cast<float>(std::max<int64_t>(count, 1));
        }
        out[oy * p.ow + ox] = acc;
      }
    }
  });
}

}  // namespace walle
