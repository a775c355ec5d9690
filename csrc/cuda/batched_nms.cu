// CUDA kernels of diffdet::batched_nms_padded and diffdet::batched_nms, with no host sync inside
// batched_nms_padded (batched_nms reads the count back once, at the end).
//
// 1. Order: a stable sort by decreasing score, then a stable sort of that order by class, so each
//    class is one contiguous run, in decreasing score (ties: lower index first).
// 2. Mask: for 64 x 64 tiles of the class-sorted boxes above the diagonal, bit j of row i says that
//    later box j (same class) has IoU > threshold with box i. Tiles whose rows and columns share no
//    class are skipped (never written, never read): per-class masks, so the work is the sum over
//    classes of n_c^2 / 2 instead of K^2 / 2.
// 3. Suppression: one block per 64-row tile walks the class runs that start in its tile, row by row,
//    keeping a shared-memory bitset of suppressed boxes of the run: classes run in parallel.
// 4. Compaction: kept flags in score order, an inclusive scan gives each kept box its slot; the rest
//    of the fixed-size result is -1 and the count stays on the device.
// Ties: equal scores are visited by lower index (stable sort); torchvision's CUDA nms order for ties
// is unspecified, so with tied, overlapping boxes its keep set may differ from ours.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/box_iou.h"
#include "common/nms_host.h"

namespace diffdet {
namespace {

constexpr int kTile = 64;  // boxes per mask word
constexpr int kReduceThreads = 128;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// boxes / cls are in class-sorted order (visit), mask is [K, words] uint64.
template <typename T>
__global__ void mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ cls, int64_t num, int64_t words,
    double iou_threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (col_tile < row_tile) {
    return;
  }
  const int64_t row0 = row_tile * kTile, col0 = col_tile * kTile;
  const int64_t rows = num - row0 < kTile ? num - row0 : kTile;
  const int64_t cols = num - col0 < kTile ? num - col0 : kTile;
  // classes ascend along the sorted order: the tiles share a class iff their ranges overlap
  if (cls[row0] > cls[col0 + cols - 1] || cls[col0] > cls[row0 + rows - 1]) {
    return;
  }
  __shared__ T s_box[kTile * 4];
  __shared__ T s_area[kTile];
  __shared__ int64_t s_cls[kTile];
  if (threadIdx.x < cols) {
    const T* b = boxes + 4 * (col0 + threadIdx.x);
    for (int q = 0; q < 4; ++q) {
      s_box[4 * threadIdx.x + q] = b[q];
    }
    s_area[threadIdx.x] = box_area(b[0], b[1], b[2], b[3]);
    s_cls[threadIdx.x] = cls[col0 + threadIdx.x];
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }
  const int64_t i = row0 + threadIdx.x;
  const T* a = boxes + 4 * i;
  const T area_a = box_area(a[0], a[1], a[2], a[3]);
  const int64_t ci = cls[i];
  unsigned long long bits = 0;
  for (int j = 0; j < cols; ++j) {
    if (col0 + j <= i || s_cls[j] != ci) {
      continue;
    }
    const T* b = s_box + 4 * j;
    const T iou = box_iou<T>(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], s_area[j]);
    if (static_cast<double>(iou) > iou_threshold) {  // NaN (degenerate boxes) suppresses nothing
      bits |= 1ULL << j;
    }
  }
  mask[i * words + col_tile] = bits;
}

// Block b walks the class runs starting in rows [64 b, 64 b + 64); keep[i] = 1 for kept row i.
__global__ void suppress_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ cls,
    int64_t num, int64_t words, uint8_t* __restrict__ keep) {
  extern __shared__ unsigned long long removed[];  // [words] (only the run's words are used)
  const int64_t tile_end_full = (static_cast<int64_t>(blockIdx.x) + 1) * kTile;
  const int64_t tile_end = tile_end_full < num ? tile_end_full : num;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * kTile; start < tile_end; ++start) {
    if (start > 0 && cls[start] == cls[start - 1]) {
      continue;  // not the start of a run
    }
    int64_t end = start + 1;
    while (end < num && cls[end] == cls[start]) {
      ++end;
    }
    const int64_t w0 = start / kTile, w1 = (end - 1) / kTile;
    for (int64_t w = w0 + threadIdx.x; w <= w1; w += blockDim.x) {
      removed[w - w0] = 0;
    }
    __syncthreads();
    for (int64_t i = start; i < end; ++i) {
      const bool gone = (removed[i / kTile - w0] >> (i % kTile)) & 1ULL;
      __syncthreads();  // every thread has read the bit before any thread updates the words
      if (!gone) {
        if (threadIdx.x == 0) {
          keep[i] = 1;
        }
        for (int64_t w = i / kTile + threadIdx.x; w <= w1; w += blockDim.x) {
          removed[w - w0] |= mask[i * words + w];
        }
      }
      __syncthreads();
    }
  }
}

// keep_orig[visit[i]] = keep_sorted[i]
__global__ void unsort_kernel(const uint8_t* __restrict__ keep_sorted, const int64_t* __restrict__ visit, int64_t num,
    int32_t* __restrict__ keep_orig) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < num) {
    keep_orig[visit[i]] = keep_sorted[i];
  }
}

// out[slot[i] - 1] = order[i] for kept i (slot: inclusive scan of the kept flags in score order).
__global__ void compact_kernel(const int32_t* __restrict__ flags, const int32_t* __restrict__ slot,
    const int64_t* __restrict__ order, int64_t num, int64_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < num && flags[i]) {
    out[slot[i] - 1] = order[i];
  }
}

std::tuple<at::Tensor, at::Tensor> batched_nms_padded_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs);
  TORCH_CHECK(boxes.is_cuda(), "boxes must be a CUDA tensor, got ", boxes.device());
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t num = boxes.size(0);
  const auto long_opts = boxes.options().dtype(at::kLong);
  at::Tensor out = at::full({num}, -1, long_opts);
  if (num == 0) {
    return {out, at::zeros({}, long_opts)};
  }
  const int64_t words = ceil_div(num, kTile);
  TORCH_CHECK(words * 8 <= 48 * 1024, "batched_nms on CUDA takes at most ", 48 * 1024 / 8 * kTile, " boxes, got ", num);
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor by_class = std::get<1>(at::sort(idxs.index_select(0, order), /*stable=*/true, 0, false));
  const at::Tensor visit = order.index_select(0, by_class);  // class runs, each by decreasing score
  const at::Tensor cls = idxs.index_select(0, visit).contiguous();
  const at::Tensor sorted_boxes = boxes.index_select(0, visit).contiguous();
  at::Tensor mask = at::empty({num, words}, long_opts);  // bits; tiles without a shared class stay unwritten
  at::Tensor keep_sorted = at::zeros({num}, boxes.options().dtype(at::kByte));
  at::Tensor keep_orig = at::empty({num}, boxes.options().dtype(at::kInt));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
    mask_kernel<scalar_t><<<grid, kTile, 0, stream>>>(sorted_boxes.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(), num,
        words, iou_threshold, reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  suppress_kernel<<<static_cast<unsigned>(words), kReduceThreads, words * sizeof(unsigned long long), stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), cls.data_ptr<int64_t>(), num, words,
      keep_sorted.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const unsigned blocks = static_cast<unsigned>(ceil_div(num, 256));
  unsort_kernel<<<blocks, 256, 0, stream>>>(keep_sorted.data_ptr<uint8_t>(), visit.data_ptr<int64_t>(), num,
      keep_orig.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor flags = keep_orig.index_select(0, order).contiguous();  // kept flags in score order
  const at::Tensor slot = at::cumsum(flags, 0, at::kInt);
  compact_kernel<<<blocks, 256, 0, stream>>>(flags.data_ptr<int32_t>(), slot.data_ptr<int32_t>(),
      order.data_ptr<int64_t>(), num, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, slot.select(0, num - 1).to(at::kLong)};
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  auto [keep, count] = batched_nms_padded_cuda(boxes, scores, idxs, iou_threshold);
  return keep.narrow(0, 0, count.item<int64_t>());  // the one host sync: the number kept
}

}  // namespace

TORCH_LIBRARY_IMPL(diffdet, CUDA, m) {
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("batched_nms_padded", &batched_nms_padded_cuda);
}

}  // namespace diffdet
