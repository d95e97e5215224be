// RASTER: the one data-movement op. An output pre-filled with a constant, then written by strided
// regions in order. Works on raw elements of 1, 2, 4 or 8 bytes, so it serves every dtype.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"

namespace walle {

struct RasterRegion {
  int input = 0;
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t src_offset = 0;
  int64_t src_strides[kMaxRank] = {};
  int64_t dst_offset = 0;
  int64_t dst_strides[kMaxRank] = {};
};

// Throws unless every element the region touches lies inside [0, src_elems) / [0, dst_elems).
void validate_region(const RasterRegion& r, int64_t src_elems, int64_t dst_elems);

// fill_bits: the fill element's bytes (little end first, itemsize of them).
void raster_op(int itemsize, const std::vector<RasterRegion>& regions, const void* const* inputs, void* out,
               int64_t out_elems, uint64_t fill_bits);

}  // namespace walle
