// CPU kernel of diffdet::batched_nms and diffdet::batched_nms_padded.
//
// One stable sort of the scores (decreasing, ties by lower index: torchvision's nms order), then the
// boxes are grouped by class keeping that order and each class runs the greedy suppression over its
// own boxes only, with an early exit once no box is left undecided; classes run in parallel when there
// are enough boxes. The keep set equals torchvision's, ties included. The order of the result follows
// torchvision's batched_nms on CPU too: up to kTorchvisionVanillaMinBoxes boxes (its coordinate trick)
// the sort order; above (its per-class loop) an unstable descending sort of the kept scores, which we
// repeat with the same call, so equal-score boxes come out in the same order as torchvision's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/box_iou.h"
#include "common/nms_host.h"

namespace diffdet {
namespace {

// torchvision.ops.batched_nms switches to its per-class loop above 4000 box coordinates on CPU.
constexpr int64_t kTorchvisionVanillaMinBoxes = 1000;
// Classes run in parallel only when the greedy scans hold this many box pairs (sum over classes of
// n_c^2 / 2, a few ms of work): measured on 2 shared cores, 4000 boxes over 80 classes (1e5 pairs)
// took 2.9 ms on one thread and 8.0 ms on two, the pool's wake-up costing more than the work.
constexpr int64_t kParallelMinPairs = int64_t{1} << 21;

template <typename T>
struct Boxes {
  const T* xyxy;
  std::vector<T> area;
};

// Greedy NMS over one class: visit[0..n) in visiting order; marks keep[box] for the kept ones.
template <typename T>
void greedy(const Boxes<T>& b, const int64_t* visit, int64_t n, double iou_threshold, uint8_t* keep) {
  std::vector<uint8_t> suppressed(n, 0);
  int64_t alive = n;  // boxes neither kept nor suppressed yet: the scan stops when none is left
  for (int64_t i = 0; i < n && alive > 0; ++i) {
    if (suppressed[i]) {
      continue;
    }
    --alive;
    const int64_t a = visit[i];
    keep[a] = 1;
    const T* p = b.xyxy + 4 * a;
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j]) {
        continue;
      }
      const T* q = b.xyxy + 4 * visit[j];
      const T iou = box_iou<T>(p[0], p[1], p[2], p[3], b.area[a], q[0], q[1], q[2], q[3], b.area[visit[j]]);
      if (iou > iou_threshold) {  // T promoted to double, as torchvision compares
        suppressed[j] = 1;
        --alive;
      }
    }
  }
}

// Positions of `items` regrouped by class (stable), and the start of each class run (plus the end).
std::vector<int64_t> group_by_class(std::vector<int64_t>& items, const int64_t* cls) {
  std::stable_sort(items.begin(), items.end(), [&](int64_t a, int64_t b) { return cls[a] < cls[b]; });
  std::vector<int64_t> starts;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i == 0 || cls[items[i]] != cls[items[i - 1]]) {
      starts.push_back(static_cast<int64_t>(i));
    }
  }
  starts.push_back(static_cast<int64_t>(items.size()));
  return starts;
}

template <typename T>
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  const int64_t num = boxes.size(0);
  Boxes<T> b{boxes.data_ptr<T>(), std::vector<T>(num)};
  for (int64_t i = 0; i < num; ++i) {
    const T* p = b.xyxy + 4 * i;
    b.area[i] = box_area(p[0], p[1], p[2], p[3]);
  }
  const int64_t* cls = idxs.data_ptr<int64_t>();
  // The one sort: decreasing score, ties by lower index (torchvision's nms sorts stably too).
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* o = order.data_ptr<int64_t>();
  std::vector<int64_t> visit(o, o + num);
  const std::vector<int64_t> starts = group_by_class(visit, cls);  // each class in visiting order
  const int64_t num_classes = static_cast<int64_t>(starts.size()) - 1;
  std::vector<uint8_t> keep(num, 0);
  int64_t pairs = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    pairs += (starts[c + 1] - starts[c]) * (starts[c + 1] - starts[c]) / 2;
  }
  const int64_t grain = pairs >= kParallelMinPairs ? 1 : num_classes;
  at::parallel_for(0, num_classes, grain, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      greedy<T>(b, visit.data() + starts[c], starts[c + 1] - starts[c], iou_threshold, keep.data());
    }
  });
  std::vector<int64_t> kept;
  if (num <= kTorchvisionVanillaMinBoxes) {  // the coordinate trick returns nms's order: the sort's
    for (int64_t i = 0; i < num; ++i) {
      if (keep[o[i]]) {
        kept.push_back(o[i]);
      }
    }
    return at::tensor(kept, boxes.options().dtype(at::kLong));
  }
  // The per-class loop re-sorts the kept boxes (ascending index) by score, with an unstable sort.
  for (int64_t i = 0; i < num; ++i) {
    if (keep[i]) {
      kept.push_back(i);
    }
  }
  const at::Tensor kept_t = at::tensor(kept, boxes.options().dtype(at::kLong));
  return kept_t.index_select(0, std::get<1>(scores.index_select(0, kept_t).sort(0, /*descending=*/true)));
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs);
  TORCH_CHECK(boxes.device().is_cpu(), "boxes must be a CPU tensor, got ", boxes.device());
  if (boxes.size(0) == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor boxes_c = boxes.contiguous(), scores_c = scores.contiguous(), idxs_c = idxs.contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cpu", [&] {
    keep = nms_impl<scalar_t>(boxes_c, scores_c, idxs_c, iou_threshold);
  });
  return keep;
}

std::tuple<at::Tensor, at::Tensor> batched_nms_padded_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  const at::Tensor kept = batched_nms_cpu(boxes, scores, idxs, iou_threshold);
  at::Tensor keep = at::empty({boxes.size(0)}, boxes.options().dtype(at::kLong));
  keep.narrow(0, 0, kept.size(0)).copy_(kept);
  keep.narrow(0, kept.size(0), boxes.size(0) - kept.size(0)).fill_(-1);
  return {keep, at::scalar_tensor(kept.size(0), boxes.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffdet, CPU, m) {
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("batched_nms_padded", &batched_nms_padded_cpu);
}

}  // namespace diffdet
