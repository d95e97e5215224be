#include "raster.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

namespace walle {

void validate_region(const RasterRegion& r, int64_t src_elems, int64_t dst_elems) {
  require(r.rank >= 0 && r.rank <= kMaxRank, "raster: region rank exceeds 8");
  for (int d = 0; d < r.rank; ++d) {
    if (r.size[d] <= 0) return;  // empty region: copies nothing
  }
  // 128-bit arithmetic: offsets and strides come from the model and may be absurd
  auto span = [&](int64_t offset, const int64_t* strides, int64_t limit, const char* side) {
    __int128 lo = offset, hi = offset;
    for (int d = 0; d < r.rank; ++d) {
      __int128 step = static_cast<__int128>(r.size[d] - 1) * strides[d];
      if (step < 0) lo += step;
      else hi += step;
    }
    require(lo >= 0 && hi < limit, std::string("raster: region ") + side + " range outside its buffer");
  };
  span(r.src_offset, r.src_strides, src_elems, "source");
  span(r.dst_offset, r.dst_strides, dst_elems, "destination");
}

namespace {

template <class T>
void fill_typed(T* out, int64_t n, uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  for (int64_t i = 0; i < n; ++i) out[i] = v;
}

// Copies one region, the innermost dimension as a tight loop (memcpy when both sides are dense).
template <class T>
void copy_region(const RasterRegion& r, const T* src, T* dst) {
  int64_t size[kMaxRank], ss[kMaxRank], ds[kMaxRank];
  int rank = 0;
  // drop size-1 dims and merge dims that are contiguous on both sides
  for (int d = 0; d < r.rank; ++d) {
    if (r.size[d] <= 0) return;
    if (r.size[d] == 1) continue;
    if (rank > 0 && ss[rank - 1] == r.src_strides[d] * r.size[d] &&
        ds[rank - 1] == r.dst_strides[d] * r.size[d]) {
      size[rank - 1] *= r.size[d];
      ss[rank - 1] = r.src_strides[d];
      ds[rank - 1] = r.dst_strides[d];
      continue;
    }
    size[rank] = r.size[d];
    ss[rank] = r.src_strides[d];
    ds[rank] = r.dst_strides[d];
    ++rank;
  }
  src += r.src_offset;
  dst += r.dst_offset;
  if (rank == 0) {
    *dst = *src;
    return;
  }
  const int64_t n = size[rank - 1], si = ss[rank - 1], di = ds[rank - 1];
  int64_t idx[kMaxRank] = {};
  for (;;) {
    if (si == 1 && di == 1) {
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i * di] = src[i * si];
    }
    int d = rank - 2;
    for (; d >= 0; --d) {
      src += ss[d];
      dst += ds[d];
      if (++idx[d] < size[d]) break;
      src -= ss[d] * size[d];
      dst -= ds[d] * size[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

template <class T>
void raster_typed(const std::vector<RasterRegion>& regions, const void* const* inputs, void* out,
                  int64_t out_elems, uint64_t fill_bits, bool skip_fill) {
  T* dst = static_cast<T*>(out);
  if (!skip_fill && fill_bits == 0) std::memset(dst, 0, static_cast<size_t>(out_elems) * sizeof(T));
  if (!skip_fill && fill_bits != 0) fill_typed(dst, out_elems, fill_bits);
  for (const RasterRegion& r : regions) copy_region(r, static_cast<const T*>(inputs[r.input]), dst);
}

// The first element and length of a region's destination when it is one dense row-major block.
bool dense_block(const RasterRegion& r, int64_t& first, int64_t& length) {
  std::pair<int64_t, int64_t> dims[kMaxRank];  // (stride, size) of the dims that move
  int n = 0;
  length = 1;
  for (int d = 0; d < r.rank; ++d) {
    if (r.size[d] <= 0) return false;
    length *= r.size[d];
    if (r.size[d] > 1) dims[n++] = {r.dst_strides[d], r.size[d]};
  }
  std::sort(dims, dims + n, [](const auto& a, const auto& b) { return a.first > b.first; });
  int64_t expected = 1;  // the stride a dense block needs, innermost first
  for (int i = n - 1; i >= 0; --i) {
    if (dims[i].first != expected) return false;
    expected *= dims[i].second;
  }
  first = r.dst_offset;
  return true;
}

}  // namespace

bool regions_tile_output(const std::vector<RasterRegion>& regions, int64_t out_elems) {
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first, length)
  for (const RasterRegion& r : regions) {
    int64_t first = 0, length = 0;
    if (!dense_block(r, first, length)) return false;
    blocks.emplace_back(first, length);
  }
  std::sort(blocks.begin(), blocks.end());
  int64_t next = 0;
  for (const auto& [first, length] : blocks) {
    if (first != next) return false;
    next += length;
  }
  return next == out_elems;
}

void raster_op(int itemsize, const std::vector<RasterRegion>& regions, const void* const* inputs, void* out,
               int64_t out_elems, uint64_t fill_bits, bool skip_fill) {
  switch (itemsize) {
    case 1: return raster_typed<uint8_t>(regions, inputs, out, out_elems, fill_bits, skip_fill);
    case 2: return raster_typed<uint16_t>(regions, inputs, out, out_elems, fill_bits, skip_fill);
    case 4: return raster_typed<uint32_t>(regions, inputs, out, out_elems, fill_bits, skip_fill);
    case 8: return raster_typed<uint64_t>(regions, inputs, out, out_elems, fill_bits, skip_fill);
    default: throw Error("raster: element size must be 1, 2, 4 or 8 bytes");
  }
}

void raster_copy(int itemsize, const RasterRegion& r, const void* src, void* dst) {
  switch (itemsize) {
    case 1: return copy_region(r, static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst));
    case 2: return copy_region(r, static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst));
    case 4: return copy_region(r, static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst));
    case 8: return copy_region(r, static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst));
    default: throw Error("raster: element size must be 1, 2, 4 or 8 bytes");
  }
}

}  // namespace walle
