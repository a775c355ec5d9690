// Host-side checks of batched_nms shared by the CPU and CUDA entry points (the last line of defence:
// torch.ops.diffdet.* can be called directly, so they stay even though the Python face validates first).
#pragma once

#include <ATen/ATen.h>

namespace diffdet {

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [K, 4], got ", boxes.sizes());
  TORCH_CHECK(
      boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
      "boxes must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "scores must be [K] with K = ", boxes.size(0),
      ", got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), "scores must be floating point, got ", scores.scalar_type());
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "idxs must be [K] with K = ", boxes.size(0),
      ", got ", idxs.sizes());
  TORCH_CHECK(idxs.scalar_type() == at::kLong, "idxs must be int64, got ", idxs.scalar_type());
  TORCH_CHECK(scores.device() == boxes.device() && idxs.device() == boxes.device(),
      "boxes, scores and idxs must be on one device, got ", boxes.device(), ", ", scores.device(), ", ",
      idxs.device());
}

}  // namespace diffdet
