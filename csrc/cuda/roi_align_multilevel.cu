// CUDA kernels of diffdet::roi_align_multilevel and its backward: one launch for all levels, no host
// sync (levels are chosen per box inside the kernel).
//
// Layout. The maps are read channels-last ([B, H, W, C], channel stride 1): a warp's threads are
// consecutive channels, so every bilinear tap is one coalesced load. NCHW maps are copied to
// channels-last once per call (a no-op for channels-last maps). With NCHW reads each tap of a warp
// would touch 32 sectors for 32 useful values; the copy moves each map twice (read + write), which
// the taps of a few hundred boxes already exceed. Callers pooling the same maps several times (the
// 6 head stages) should keep the FPN outputs channels-last and pay nothing.
//
// Grid: one block per (box, 256-channel slice). Per chunk of kSampleChunk samples the block computes
// each sample's four corner offsets and weights once, into shared memory; every thread then applies
// them to its channel (reuse over channels). fp32 accumulation for half/bfloat16 (double for double).
// A sample outside the map (or on an empty H = 0 / W = 0 level) is skipped, as in the CPU kernel and
// torchvision: no read of pixel (0, 0) with weight 0 (a non-finite value there would make 0 * inf = NaN;
// an empty level has no pixel to read) and no atomicAdd of 0 in the backward.
//
// Backward: the same taps, scattered with atomicAdd into a float32 (double) channels-last buffer,
// then cast to the features' dtype in NCHW. Not deterministic (float atomics in any order): it alerts
// under torch.use_deterministic_algorithms, and the Python face's backward then computes the gradient
// with the (deterministic) reference instead. The forward has no atomics and runs here in every mode.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/roi_align_common.h"
#include "common/roi_align_host.h"

namespace diffdet {
namespace {

constexpr int kSampleChunk = 128;  // samples whose taps a block stages in shared memory at once
constexpr int kMaxThreads = 256;   // channels per block

template <typename T>
struct LevelArgs {
  T* data[kMaxLevels];
  int64_t height[kMaxLevels], width[kMaxLevels];
  int64_t stride_n[kMaxLevels], stride_h[kMaxLevels], stride_w[kMaxLevels];  // channel stride is 1
  int num_levels;
};

struct KernelOptions {
  int size, sampling_ratio, canonical_level, min_level;
  bool aligned, bin_major;
  double canonical_box_size;
};

// Level and geometry of box k; -1 when it pools to zero (undefined level, batch index out of range).
template <typename scalar_t, typename box_t, typename acc_t>
__device__ int box_setup(const box_t* boxes, const int64_t* batch_idx, int64_t k, int64_t batch, int num_levels,
    const KernelOptions& opt, RoiGeometry<acc_t>& g) {
  const box_t* b = boxes + 4 * k;
  const int lvl = assign_level<box_t>(b[0], b[1], b[2], b[3], static_cast<box_t>(opt.canonical_box_size),
      opt.canonical_level, opt.min_level, num_levels);
  const int64_t n = batch_idx[k];
  if (lvl < 0 || n < 0 || n >= batch) {
    return -1;
  }
  // detectron2's ROIAlign casts the rois to the features' dtype before sampling.
  auto round = [](box_t v) { return static_cast<acc_t>(static_cast<scalar_t>(v)); };
  const acc_t scale = static_cast<acc_t>(ldexp(1.0, -(opt.min_level + lvl)));
  g = roi_geometry<acc_t>(round(b[0]), round(b[1]), round(b[2]), round(b[3]), scale, opt.size, opt.sampling_ratio,
      opt.aligned);
  return lvl;
}

// Stage the taps of samples [s0, s0 + n) of the box (bin-major, then row-major within the bin);
// s_in[i] says whether sample s0 + i lies on the map (false: the sample is skipped).
template <typename acc_t>
__device__ void stage_taps(const RoiGeometry<acc_t>& g, int size, int64_t s0, int n, int64_t height, int64_t width,
    int64_t stride_h, int64_t stride_w, int64_t* s_off, acc_t* s_w, bool* s_in) {
  const int64_t per_bin = static_cast<int64_t>(g.grid_h) * g.grid_w;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t s = s0 + i;
    const int64_t bin = s / per_bin, r = s % per_bin;
    const int ph = static_cast<int>(bin / size), pw = static_cast<int>(bin % size);
    const int iy = static_cast<int>(r / g.grid_w), ix = static_cast<int>(r % g.grid_w);
    const acc_t y = sample_coord(g.start_y, g.bin_h, ph, iy, g.grid_h);
    const acc_t x = sample_coord(g.start_x, g.bin_w, pw, ix, g.grid_w);
    const auto t = bilinear_taps<acc_t>(y, x, height, width, stride_h, stride_w, g.inv_count);
    s_in[i] = t.inside;
    for (int q = 0; q < 4; ++q) {
      s_off[4 * i + q] = t.offset[q];
      s_w[4 * i + q] = t.weight[q];
    }
  }
}

template <typename scalar_t, typename box_t>
__global__ void forward_kernel(LevelArgs<const scalar_t> L, const box_t* __restrict__ boxes,
    const int64_t* __restrict__ batch_idx, int64_t batch, int64_t channels, KernelOptions opt, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int64_t s_off[4 * kSampleChunk];
  __shared__ acc_t s_w[4 * kSampleChunk];
  __shared__ bool s_in[kSampleChunk];
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t bins = static_cast<int64_t>(opt.size) * opt.size;
  const int64_t bin_stride = opt.bin_major ? channels : 1, chan_stride = opt.bin_major ? 1 : bins;
  scalar_t* o = out + k * bins * channels + (c < channels ? c : 0) * chan_stride;
  RoiGeometry<acc_t> g;
  const int lvl = box_setup<scalar_t>(boxes, batch_idx, k, batch, L.num_levels, opt, g);
  const int64_t per_bin = lvl < 0 ? 0 : static_cast<int64_t>(g.grid_h) * g.grid_w;
  if (per_bin == 0) {  // the same for the whole block
    if (c < channels) {
      for (int64_t bin = 0; bin < bins; ++bin) {
        o[bin * bin_stride] = static_cast<scalar_t>(0);
      }
    }
    return;
  }
  // Null for an empty level: then every sample is outside (s_in false) and base is never read.
  const scalar_t* base = L.data[lvl] + batch_idx[k] * L.stride_n[lvl] + (c < channels ? c : 0);
  const int64_t total = bins * per_bin;
  acc_t acc = 0;
  int64_t bin = 0;
  for (int64_t s0 = 0; s0 < total; s0 += kSampleChunk) {
    const int n = static_cast<int>(total - s0 < kSampleChunk ? total - s0 : kSampleChunk);
    __syncthreads();  // the previous chunk's taps are consumed
    stage_taps(g, opt.size, s0, n, L.height[lvl], L.width[lvl], L.stride_h[lvl], L.stride_w[lvl], s_off, s_w, s_in);
    __syncthreads();
    if (c < channels) {
      for (int i = 0; i < n; ++i) {
        if (s_in[i]) {  // the same for every thread of the block: no divergence
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            acc += s_w[4 * i + q] * static_cast<acc_t>(base[s_off[4 * i + q]]);
          }
        }
        if ((s0 + i + 1) % per_bin == 0) {
          o[bin * bin_stride] = static_cast<scalar_t>(acc);
          acc = 0;
          ++bin;
        }
      }
    }
  }
}

template <typename scalar_t, typename box_t>
__global__ void backward_kernel(LevelArgs<at::opmath_type<scalar_t>> L, const box_t* __restrict__ boxes,
    const int64_t* __restrict__ batch_idx, int64_t batch, int64_t channels, KernelOptions opt,
    const scalar_t* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int64_t s_off[4 * kSampleChunk];
  __shared__ acc_t s_w[4 * kSampleChunk];
  __shared__ bool s_in[kSampleChunk];
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t bins = static_cast<int64_t>(opt.size) * opt.size;
  const int64_t bin_stride = opt.bin_major ? channels : 1, chan_stride = opt.bin_major ? 1 : bins;
  RoiGeometry<acc_t> g;
  const int lvl = box_setup<scalar_t>(boxes, batch_idx, k, batch, L.num_levels, opt, g);
  const int64_t per_bin = lvl < 0 ? 0 : static_cast<int64_t>(g.grid_h) * g.grid_w;
  if (per_bin == 0) {
    return;
  }
  const scalar_t* gk = grad + k * bins * channels + (c < channels ? c : 0) * chan_stride;
  acc_t* base = L.data[lvl] + batch_idx[k] * L.stride_n[lvl] + (c < channels ? c : 0);
  const int64_t total = bins * per_bin;
  for (int64_t s0 = 0; s0 < total; s0 += kSampleChunk) {
    const int n = static_cast<int>(total - s0 < kSampleChunk ? total - s0 : kSampleChunk);
    __syncthreads();
    stage_taps(g, opt.size, s0, n, L.height[lvl], L.width[lvl], L.stride_h[lvl], L.stride_w[lvl], s_off, s_w, s_in);
    __syncthreads();
    if (c < channels) {
      for (int i = 0; i < n; ++i) {
        if (!s_in[i]) {
          continue;
        }
        const acc_t gv = static_cast<acc_t>(gk[((s0 + i) / per_bin) * bin_stride]);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          gpuAtomicAdd(base + s_off[4 * i + q], s_w[4 * i + q] * gv);
        }
      }
    }
  }
}

template <typename T>
LevelArgs<T> level_args(const std::vector<at::Tensor>& maps) {
  LevelArgs<T> a{};
  a.num_levels = static_cast<int>(maps.size());
  for (size_t l = 0; l < maps.size(); ++l) {
    a.data[l] = static_cast<T*>(maps[l].data_ptr());
    a.height[l] = maps[l].size(2);
    a.width[l] = maps[l].size(3);
    a.stride_n[l] = maps[l].stride(0);
    a.stride_h[l] = maps[l].stride(2);
    a.stride_w[l] = maps[l].stride(3);
  }
  return a;
}

KernelOptions kernel_options(const RoiAlignOptions& o) {
  return {static_cast<int>(o.output_size), static_cast<int>(o.sampling_ratio), static_cast<int>(o.canonical_level),
      static_cast<int>(o.min_level), o.aligned, o.bin_major, o.canonical_box_size};
}

dim3 block_for(int64_t channels) {
  const int64_t threads = std::min<int64_t>(kMaxThreads, (channels + 31) / 32 * 32);
  return dim3(static_cast<unsigned>(threads));
}

at::Tensor roi_align_multilevel_cuda(const at::TensorList features, const at::Tensor& boxes, const at::Tensor& batch_idx,
    int64_t output_size, int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level,
    int64_t min_level, bool bin_major) {
  const RoiAlignOptions opt{output_size, sampling_ratio, aligned, canonical_box_size, canonical_level, min_level, bin_major};
  check_roi_options(opt, features.size());
  check_roi_boxes(boxes, batch_idx);
  check_roi_features(features, boxes);
  TORCH_CHECK(boxes.is_cuda(), "boxes must be a CUDA tensor, got ", boxes.device());
  TORCH_CHECK(output_size <= 64, "output_size must be <= 64 on CUDA, got ", output_size);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t num = boxes.size(0), channels = features[0].size(1), batch = features[0].size(0);
  at::Tensor out = empty_pooled(num, channels, opt, features[0].options());
  if (out.numel() == 0) {
    return out;
  }
  std::vector<at::Tensor> maps;
  for (const auto& f : features) {
    maps.push_back(f.contiguous(at::MemoryFormat::ChannelsLast));
  }
  const at::Tensor boxes_c = boxes.contiguous(), idx_c = batch_idx.contiguous();
  const dim3 block = block_for(channels);
  const dim3 grid(static_cast<unsigned>(num), static_cast<unsigned>((channels + block.x - 1) / block.x));
  TORCH_CHECK(num < (int64_t{1} << 31), "at most 2^31 - 1 boxes on CUDA, got ", num);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "roi_align_multilevel_cuda", [&] {
    const auto levels = level_args<const scalar_t>(maps);
    dispatch_box_type(boxes, [&](auto box) {
      using box_t = decltype(box);
      forward_kernel<scalar_t, box_t><<<grid, block, 0, stream>>>(levels, boxes_c.data_ptr<box_t>(),
          idx_c.data_ptr<int64_t>(), batch, channels, kernel_options(opt), out.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> roi_align_multilevel_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes,
    const at::Tensor& batch_idx, int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t output_size, int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level,
    int64_t min_level, bool bin_major, bool channels_last) {
  const RoiAlignOptions opt{output_size, sampling_ratio, aligned, canonical_box_size, canonical_level, min_level, bin_major};
  check_roi_backward(grad, boxes, batch_idx, channels, heights, widths, opt);
  TORCH_CHECK(boxes.is_cuda() && grad.device() == boxes.device(), "grad and boxes must be on one CUDA device");
  at::globalContext().alertNotDeterministic("roi_align_multilevel_backward_cuda");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t num = boxes.size(0);
  // Accumulated channels-last whatever the result's layout: the kernel adds along contiguous channels.
  const auto acc_options = grad.options().dtype(at::toOpMathType(grad.scalar_type()));
  std::vector<at::Tensor> acc_maps = zero_grad_maps(batch_size, channels, heights, widths, acc_options, true);
  if (num > 0 && channels > 0) {
    const at::Tensor grad_c = grad.contiguous(), boxes_c = boxes.contiguous(), idx_c = batch_idx.contiguous();
    const dim3 block = block_for(channels);
    const dim3 grid(static_cast<unsigned>(num), static_cast<unsigned>((channels + block.x - 1) / block.x));
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_multilevel_backward_cuda", [&] {
      const auto levels = level_args<at::opmath_type<scalar_t>>(acc_maps);
      dispatch_box_type(boxes, [&](auto box) {
        using box_t = decltype(box);
        backward_kernel<scalar_t, box_t><<<grid, block, 0, stream>>>(levels, boxes_c.data_ptr<box_t>(),
            idx_c.data_ptr<int64_t>(), batch_size, channels, kernel_options(opt), grad_c.data_ptr<scalar_t>());
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::vector<at::Tensor> out;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (auto& m : acc_maps) {  // m is channels-last already: returned as is when its dtype is grad's
    const bool as_is = channels_last && m.scalar_type() == grad.scalar_type();
    out.push_back(as_is ? m : at::empty(m.sizes(), grad.options().memory_format(format)).copy_(m));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffdet, CUDA, m) {
  m.impl("roi_align_multilevel", &roi_align_multilevel_cuda);
  m.impl("_roi_align_multilevel_backward", &roi_align_multilevel_backward_cuda);
}

}  // namespace diffdet
