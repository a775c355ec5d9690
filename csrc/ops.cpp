// Schemas of every diffdet op, and nothing else: each backend (cpu/, cuda/) only registers
// implementations. Feature maps are NCHW contiguous unless stated; boxes are xyxy in input-image pixels.
#include <torch/library.h>

TORCH_LIBRARY(diffdet, m) {
  // Multi-level RoIAlign. features: L maps [B, C, Hl, Wl] at strides 2^(min_level + l), any memory
  // layout (NCHW or channels-last); boxes [K, 4] float32/float64; batch_idx [K] int64. Returns
  // [K, C, S, S] contiguous, or [K, S*S, C] contiguous when bin_major, in the features' dtype.
  m.def(
      "roi_align_multilevel(Tensor[] features, Tensor boxes, Tensor batch_idx, int output_size, "
      "int sampling_ratio, bool aligned, float canonical_box_size, int canonical_level, int min_level, "
      "bool bin_major) -> Tensor");
  // Gradient of roi_align_multilevel w.r.t. its features. grad: the output's gradient in the layout
  // that bin_major names, contiguous. Returns L maps [B, C, Hl, Wl] in grad's dtype, channels-last
  // when channels_last (the layout of the forward's features, so autograd need not copy), else NCHW.
  m.def(
      "_roi_align_multilevel_backward(Tensor grad, Tensor boxes, Tensor batch_idx, SymInt batch_size, "
      "SymInt channels, SymInt[] heights, SymInt[] widths, int output_size, int sampling_ratio, "
      "bool aligned, float canonical_box_size, int canonical_level, int min_level, bool bin_major, "
      "bool channels_last) -> Tensor[]");
  // Class-aware NMS (torchvision's semantics). boxes [K, 4] xyxy, scores [K], idxs [K] int64. Returns
  // the kept indices [N] int64 by decreasing score.
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // batched_nms with a fixed-size result for CUDA graphs: keep [K] int64 (kept indices by decreasing
  // score, then -1) and count, a 0-dim int64 tensor on the inputs' device.
  m.def(
      "batched_nms_padded(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) "
      "-> (Tensor keep, Tensor count)");
}
