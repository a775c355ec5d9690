// IoU of two xyxy boxes with torchvision's nms formula and order of operations (area = (x2-x1)(y2-y1),
// no +1), shared by the CPU and CUDA batched_nms kernels, so degenerate boxes get the same decisions.
#pragma once

#include <type_traits>

#include "common/roi_align_common.h"  // DIFFDET_HD

namespace diffdet {

// a * b rounded on its own: nvcc would otherwise fuse it with a following add into an FMA, whose
// single rounding can flip an IoU right at the threshold against the CPU (and torchvision's CPU) result.
template <typename T>
DIFFDET_HD T mul_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// torchvision's box area: (x2 - x1) * (y2 - y1), no +1; negative for a flipped box.
template <typename T>
DIFFDET_HD T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(x2 - x1, y2 - y1);
}

// `area_a` and `area_b` are the boxes' precomputed areas, as torchvision precomputes them.
template <typename T>
DIFFDET_HD T box_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T xx1 = ax1 > bx1 ? ax1 : bx1;
  const T yy1 = ay1 > by1 ? ay1 : by1;
  const T xx2 = ax2 < bx2 ? ax2 : bx2;
  const T yy2 = ay2 < by2 ? ay2 : by2;
  const T dw = xx2 - xx1, dh = yy2 - yy1;
  const T w = dw > static_cast<T>(0) ? dw : static_cast<T>(0);
  const T h = dh > static_cast<T>(0) ? dh : static_cast<T>(0);
  const T inter = mul_rn(w, h);
  return inter / (area_a + area_b - inter);
}

}  // namespace diffdet
