// RoIAlign math shared by the CPU and CUDA kernels of roi_align_multilevel: FPN level assignment,
// per-box sampling geometry and the bilinear taps of one sample. Written once, tested on the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DIFFDET_HD __host__ __device__ __forceinline__
#else
#define DIFFDET_HD inline
#endif

namespace diffdet {

// Feature levels one call can take (the CUDA kernel passes them by value). Python: MAX_LEVELS.
constexpr int kMaxLevels = 8;
// Cap of the adaptive (sampling_ratio = 0) samples per bin side, so no box, however large or
// non-finite, stalls a kernel. Only bins over 64 feature pixels differ from torchvision.
// Python: MAX_ADAPTIVE_GRID.
constexpr int kMaxAdaptiveGrid = 64;

// Level index (0 = features[0]) of box (x1, y1, x2, y2) in input pixels, by FPN Eqn. 1 as written in
// detectron2's assign_boxes_to_levels, in the boxes' type T (float or double):
//   floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8)), clamped to the levels.
// Returns -1 when the level is NaN (negative area, NaN coordinates): such a box pools to zeros, as in
// detectron2, whose NaN level matches no level. The test is written !(level == level) so NaN takes it.
template <typename T>
DIFFDET_HD int assign_level(
    T x1, T y1, T x2, T y2, T canonical_box_size, int canonical_level, int min_level, int num_levels) {
  using std::floor;  // the float overloads for float boxes (not the C double functions)
  using std::log2;
  using std::sqrt;
  const T area = (x2 - x1) * (y2 - y1);
  const T level = floor(static_cast<T>(canonical_level) + log2(sqrt(area) / canonical_box_size + static_cast<T>(1e-8)));
  if (!(level == level)) {
    return -1;
  }
  const T lo = static_cast<T>(min_level);
  const T hi = static_cast<T>(min_level + num_levels - 1);
  const T clamped = level < lo ? lo : (level > hi ? hi : level);
  return static_cast<int>(clamped) - min_level;
}

// Sampling geometry of one box on its level, in feature pixels (acc_t: float, or double for double maps).
template <typename acc_t>
struct RoiGeometry {
  acc_t start_y, start_x, bin_h, bin_w;
  int grid_h, grid_w;  // samples per bin side; 0 means no sample (the bin pools to 0)
  acc_t inv_count;     // 1 / max(grid_h * grid_w, 1)
};

// Adaptive samples per bin side: ceil(bin), 0 when it is not >= 1 (negative size or NaN: torchvision
// then runs no sample either), capped at kMaxAdaptiveGrid.
template <typename acc_t>
DIFFDET_HD int adaptive_grid(acc_t bin) {
  using std::ceil;
  const acc_t g = ceil(bin);
  if (!(g >= static_cast<acc_t>(1))) {
    return 0;
  }
  return g > static_cast<acc_t>(kMaxAdaptiveGrid) ? kMaxAdaptiveGrid : static_cast<int>(g);
}

// torchvision's RoIAlign geometry: box (already rounded to the features' dtype) scaled to the level,
// shifted by -0.5 when aligned, size clamped to >= 1 when not aligned.
template <typename acc_t>
DIFFDET_HD RoiGeometry<acc_t> roi_geometry(
    acc_t x1, acc_t y1, acc_t x2, acc_t y2, acc_t scale, int size, int sampling_ratio, bool aligned) {
  const acc_t offset = aligned ? static_cast<acc_t>(0.5) : static_cast<acc_t>(0);
  RoiGeometry<acc_t> g;
  g.start_x = x1 * scale - offset;
  g.start_y = y1 * scale - offset;
  acc_t roi_w = x2 * scale - offset - g.start_x;
  acc_t roi_h = y2 * scale - offset - g.start_y;
  if (!aligned) {
    roi_w = roi_w > static_cast<acc_t>(1) ? roi_w : static_cast<acc_t>(1);
    roi_h = roi_h > static_cast<acc_t>(1) ? roi_h : static_cast<acc_t>(1);
  }
  g.bin_w = roi_w / static_cast<acc_t>(size);
  g.bin_h = roi_h / static_cast<acc_t>(size);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(g.bin_h);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(g.bin_w);
  const int count = g.grid_h * g.grid_w;
  g.inv_count = static_cast<acc_t>(1) / static_cast<acc_t>(count > 1 ? count : 1);
  return g;
}

// Position of sample (iy, ix) of bin (ph, pw), torchvision's order of operations.
template <typename acc_t>
DIFFDET_HD acc_t sample_coord(acc_t start, acc_t bin, int p, int i, int grid) {
  return start + static_cast<acc_t>(p) * bin + (static_cast<acc_t>(i) + static_cast<acc_t>(0.5)) * bin / static_cast<acc_t>(grid);
}

// One axis of a sample's bilinear taps: the pixel below and above the coordinate and their weights.
// Outside [-1, size] (or on an empty axis) the sample adds nothing: inside is false, every field 0 (in
// bounds). The test is written !(in range) so NaN coordinates take that branch (torchvision's trick).
// Inside, the coordinate clamps to [0, size - 1].
template <typename acc_t>
struct AxisTap {
  int64_t low, high;
  acc_t low_weight, high_weight;
  bool inside;
};

template <typename acc_t>
DIFFDET_HD AxisTap<acc_t> axis_tap(acc_t v, int64_t size) {
  if (!(v >= static_cast<acc_t>(-1) && v <= static_cast<acc_t>(size)) || size <= 0) {
    return {0, 0, static_cast<acc_t>(0), static_cast<acc_t>(0), false};
  }
  v = v <= static_cast<acc_t>(0) ? static_cast<acc_t>(0) : v;
  int64_t low = static_cast<int64_t>(v), high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = static_cast<acc_t>(low);
  } else {
    high = low + 1;
  }
  const acc_t l = v - static_cast<acc_t>(low);
  return {low, high, static_cast<acc_t>(1) - l, l, true};
}

// Weight of tap (row weight ry, column weight rx) of a sample, `scale` = 1 / sample count: written once
// so every kernel rounds it the same way.
template <typename acc_t>
DIFFDET_HD acc_t tap_weight(acc_t ry, acc_t rx, acc_t scale) {
  return ry * rx * scale;
}

// The four bilinear taps of one sample: element offsets (y * stride_h + x * stride_w) and weights.
template <typename acc_t>
struct BilinearTaps {
  int64_t offset[4];
  acc_t weight[4];
  bool inside;  // false: the sample adds nothing; callers skip it (read no pixel, add no gradient)
};

// Taps of the sample at (y, x) on an H x W map, each weight multiplied by `scale` (1 / sample count),
// in the order (low row, low col), (low, high), (high, low), (high, high). A sample outside the map
// (axis_tap), or on an empty map, has inside = false, every weight 0 and every offset 0: callers must
// skip it rather than read pixel 0 with weight 0 (0 * inf is NaN; an empty map has no pixel 0), as
// the CPU kernel and torchvision skip it.
template <typename acc_t>
DIFFDET_HD BilinearTaps<acc_t> bilinear_taps(
    acc_t y, acc_t x, int64_t height, int64_t width, int64_t stride_h, int64_t stride_w, acc_t scale) {
  const AxisTap<acc_t> ty = axis_tap(y, height), tx = axis_tap(x, width);
  BilinearTaps<acc_t> t;
  const bool inside = ty.inside && tx.inside;
  t.inside = inside;
  const int64_t rows[2] = {ty.low * stride_h, ty.high * stride_h}, cols[2] = {tx.low * stride_w, tx.high * stride_w};
  const acc_t wy[2] = {ty.low_weight, ty.high_weight}, wx[2] = {tx.low_weight, tx.high_weight};
  for (int q = 0; q < 4; ++q) {
    t.offset[q] = inside ? rows[q / 2] + cols[q % 2] : 0;
    t.weight[q] = inside ? tap_weight(wy[q / 2], wx[q % 2], scale) : static_cast<acc_t>(0);
  }
  return t;
}

}  // namespace diffdet
