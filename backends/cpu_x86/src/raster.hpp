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

// fill_bits: the fill element's bytes (little end first, itemsize of them). skip_fill: the
// regions overwrite every element anyway (see regions_tile_output).
void raster_op(int itemsize, const std::vector<RasterRegion>& regions, const void* const* inputs, void* out,
               int64_t out_elems, uint64_t fill_bits, bool skip_fill = false);

// Copies one region of `src` into `dst`.
void raster_copy(int itemsize, const RasterRegion& r, const void* src, void* dst);

// Whether the regions' destinations are dense row-major blocks, pairwise disjoint, that together
// are exactly [0, out_elems): then no fill is needed and the regions may be copied in any order,
// or at the same time (a concatenation, a plain copy).
bool regions_tile_output(const std::vector<RasterRegion>& regions, int64_t out_elems);

}  // namespace walle
