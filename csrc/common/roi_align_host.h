// Host-side pieces of roi_align_multilevel shared by the CPU and CUDA entry points: the options, the
// argument checks (the last line of defence: torch.ops.diffdet.* can be called directly, so they stay
// even though the Python face validates first) and the output allocation.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/roi_align_common.h"

namespace diffdet {

struct RoiAlignOptions {
  int64_t output_size;
  int64_t sampling_ratio;
  bool aligned;
  double canonical_box_size;
  int64_t canonical_level;
  int64_t min_level;
  bool bin_major;
};

inline void check_roi_boxes(const at::Tensor& boxes, const at::Tensor& batch_idx) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [K, 4], got ", boxes.sizes());
  TORCH_CHECK(
      boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
      "boxes must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK(
      batch_idx.dim() == 1 && batch_idx.size(0) == boxes.size(0), "batch_idx must be [K] with K = ",
      boxes.size(0), ", got ", batch_idx.sizes());
  TORCH_CHECK(batch_idx.scalar_type() == at::kLong, "batch_idx must be int64, got ", batch_idx.scalar_type());
  TORCH_CHECK(batch_idx.device() == boxes.device(), "batch_idx must be on ", boxes.device(), ", got ", batch_idx.device());
}

inline void check_roi_options(const RoiAlignOptions& opt, size_t num_levels) {
  TORCH_CHECK(num_levels >= 1 && num_levels <= static_cast<size_t>(kMaxLevels), "features must hold 1 to ",
      kMaxLevels, " levels, got ", num_levels);
  TORCH_CHECK(opt.output_size >= 1, "output_size must be >= 1, got ", opt.output_size);
  TORCH_CHECK(opt.sampling_ratio >= 0, "sampling_ratio must be >= 0, got ", opt.sampling_ratio);
  TORCH_CHECK(opt.canonical_box_size > 0, "canonical_box_size must be > 0, got ", opt.canonical_box_size);
  TORCH_CHECK(opt.min_level >= 0 && opt.min_level <= 30, "min_level must be in [0, 30], got ", opt.min_level);
}

inline void check_roi_features(const at::TensorList features, const at::Tensor& boxes) {
  const auto& f0 = features[0];
  TORCH_CHECK(f0.dim() == 4, "features[0] must be [B, C, H, W], got ", f0.sizes());
  for (size_t i = 0; i < features.size(); ++i) {
    const auto& f = features[i];
    TORCH_CHECK(f.dim() == 4 && f.size(0) == f0.size(0) && f.size(1) == f0.size(1), "features[", i,
        "] must be [", f0.size(0), ", ", f0.size(1), ", H, W], got ", f.sizes());
    TORCH_CHECK(f.scalar_type() == f0.scalar_type(), "features[", i, "] must have dtype ", f0.scalar_type(),
        ", got ", f.scalar_type());
    TORCH_CHECK(f.device() == boxes.device(), "features[", i, "] must be on ", boxes.device(), ", got ", f.device());
  }
}

// Device-independent checks of the backward's arguments: options, boxes, one height and one width per
// level, and grad's shape ([K, S*S, C] when bin_major, else [K, C, S, S]).
inline void check_roi_backward(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& batch_idx,
    int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths, const RoiAlignOptions& opt) {
  check_roi_options(opt, heights.size());
  check_roi_boxes(boxes, batch_idx);
  TORCH_CHECK(heights.size() == widths.size(), "heights and widths must have one entry per level, got ",
      heights.size(), " and ", widths.size());
  const int64_t s = opt.output_size, num = boxes.size(0);
  const auto want = opt.bin_major ? std::vector<int64_t>{num, s * s, channels} : std::vector<int64_t>{num, channels, s, s};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(want), "grad must be ", at::IntArrayRef(want), ", got ", grad.sizes());
}

// Zeroed gradient accumulators, one [B, C, Hl, Wl] per level: channels-last ([B, Hl, Wl, C] seen as
// [B, C, Hl, Wl]) or NCHW.
inline std::vector<at::Tensor> zero_grad_maps(int64_t batch, int64_t channels, at::IntArrayRef heights,
    at::IntArrayRef widths, const at::TensorOptions& options, bool channels_last) {
  std::vector<at::Tensor> maps;
  for (size_t l = 0; l < heights.size(); ++l) {
    maps.push_back(channels_last ? at::zeros({batch, heights[l], widths[l], channels}, options).permute({0, 3, 1, 2})
                                 : at::zeros({batch, channels, heights[l], widths[l]}, options));
  }
  return maps;
}

// Level l holds boxes of FPN level min_level + l, at scale 2^-(min_level + l) (exact in any dtype).
inline double level_scale(int64_t min_level, int64_t level) {
  return std::ldexp(1.0, -static_cast<int>(min_level + level));
}

// Calls fn(box_t()) with box_t the boxes' type: float or double, the two check_roi_boxes lets in.
template <typename Fn>
void dispatch_box_type(const at::Tensor& boxes, const Fn& fn) {
  if (boxes.scalar_type() == at::kFloat) {
    fn(float());
  } else {
    fn(double());
  }
}

inline at::Tensor empty_pooled(int64_t num, int64_t channels, const RoiAlignOptions& opt, const at::TensorOptions& o) {
  const int64_t s = opt.output_size;
  return opt.bin_major ? at::empty({num, s * s, channels}, o) : at::empty({num, channels, s, s}, o);
}

}  // namespace diffdet
