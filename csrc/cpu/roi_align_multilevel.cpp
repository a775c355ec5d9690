// CPU kernels of diffdet::roi_align_multilevel and its backward.
//
// Forward: parallel over boxes. Per box, the bilinear taps (offsets and weights, already divided by the
// sample count) of every sample are computed once (torchvision's PreCalc idea) and reused for every
// channel. Channels-last maps (channel stride 1) are read with the channel loop innermost, which the
// compiler vectorises; NCHW maps are converted to channels-last once per call when the taps outnumber
// the map pixels enough to pay for the copy (kChannelsLastMinTapsPerPixel); otherwise each box copies
// its region of kTileChannels planes at a time into a small channels-last tile (prefetching the next
// planes' region), and pools from the tile as from channels-last maps.
// Backward: parallel over channels (each thread owns whole channel planes of the gradient, or on
// channels-last maps a block of channels of every pixel, so no two threads write one element and every
// element sums its terms in box order): deterministic, race-free. The gradient takes the layout of the
// forward's maps; on channels-last maps the channel loop is innermost and vectorised, as in the forward.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/roi_align_common.h"
#include "common/roi_align_host.h"

namespace diffdet {
namespace {

// Convert NCHW maps to channels-last when sampled taps per map pixel reach this. Measured on 2 cores,
// P2-P5 of an 800x1216 input, C = 256: at K = 1000, B = 4 (2.4 taps/pixel) the prefetching strided
// path took 127-155 ms and copy + channels-last 250 ms; at K = 4000 (9.7 taps/pixel at B = 4) the copy
// wins. Callers that pool the same maps several times (6 head stages) should pass channels-last maps:
// no copy at all.
constexpr double kChannelsLastMinTapsPerPixel = 4.0;
// Channels the NCHW forward copies into one channels-last tile (one AVX2 float vector).
constexpr int64_t kTileChannels = 8;
// Least work (channel x tap products) per parallel chunk: a smaller call runs on the calling thread,
// where waking the pool would cost more than the work.
constexpr int64_t kMinWorkPerChunk = 1 << 16;

// Grain for at::parallel_for over `count` items of `work_per_item` products each.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerChunk / std::max<int64_t>(1, work_per_item));
}

template <typename T>
struct Level {
  T* data;
  int64_t height, width, stride_n, stride_c, stride_h, stride_w;
};

template <typename T>
std::vector<Level<T>> levels_of(const std::vector<at::Tensor>& maps) {
  std::vector<Level<T>> out;
  for (const auto& m : maps) {
    out.push_back({static_cast<T*>(m.data_ptr()), m.size(2), m.size(3), m.stride(0), m.stride(1), m.stride(2), m.stride(3)});
  }
  return out;
}

// Taps of every sample of one box, bin after bin (taps_per_bin = 4 * grid_h * grid_w each).
template <typename acc_t>
struct BoxTaps {
  std::vector<int64_t> offset;
  std::vector<acc_t> weight;
  int64_t taps_per_bin = 0;
};

// Level index of box k and its taps on that level (offsets with the level's strides), or -1 when the box
// pools to zero (undefined level, batch index out of range).
template <typename scalar_t, typename box_t, typename T>
int box_taps(const box_t* boxes, const int64_t* batch_idx, int64_t k, int64_t batch, const std::vector<Level<T>>& levels,
    const RoiAlignOptions& opt, BoxTaps<at::opmath_type<scalar_t>>& taps) {
  using acc_t = at::opmath_type<scalar_t>;
  const box_t* b = boxes + 4 * k;
  const int lvl = assign_level<box_t>(b[0], b[1], b[2], b[3], static_cast<box_t>(opt.canonical_box_size),
      static_cast<int>(opt.canonical_level), static_cast<int>(opt.min_level), static_cast<int>(levels.size()));
  if (lvl < 0 || batch_idx[k] < 0 || batch_idx[k] >= batch) {
    return -1;
  }
  const auto& L = levels[lvl];
  // detectron2's ROIAlign casts the rois to the features' dtype before sampling.
  auto round = [](box_t v) { return static_cast<acc_t>(static_cast<scalar_t>(v)); };
  const int size = static_cast<int>(opt.output_size);
  const auto g = roi_geometry<acc_t>(round(b[0]), round(b[1]), round(b[2]), round(b[3]),
      static_cast<acc_t>(level_scale(opt.min_level, lvl)), size, static_cast<int>(opt.sampling_ratio), opt.aligned);
  taps.taps_per_bin = 4 * static_cast<int64_t>(g.grid_h) * g.grid_w;
  taps.offset.resize(taps.taps_per_bin * size * size);
  taps.weight.resize(taps.taps_per_bin * size * size);
  int64_t n = 0;
  for (int ph = 0; ph < size; ++ph) {
    for (int pw = 0; pw < size; ++pw) {
      for (int iy = 0; iy < g.grid_h; ++iy) {
        const acc_t y = sample_coord(g.start_y, g.bin_h, ph, iy, g.grid_h);
        for (int ix = 0; ix < g.grid_w; ++ix) {
          const acc_t x = sample_coord(g.start_x, g.bin_w, pw, ix, g.grid_w);
          const auto t = bilinear_taps<acc_t>(y, x, L.height, L.width, L.stride_h, L.stride_w, g.inv_count);
          for (int q = 0; q < 4; ++q, ++n) {
            taps.offset[n] = t.offset[q];
            taps.weight[n] = t.weight[q];
          }
        }
      }
    }
  }
  return lvl;
}

// Rows and columns a box's taps cover on one channel plane (row-contiguous planes only).
struct TapRegion {
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;  // half-open
  bool empty() const { return row_end <= row_begin || col_end <= col_begin; }
};

template <typename acc_t>
TapRegion tap_region(const BoxTaps<acc_t>& taps, int64_t stride_h, int64_t stride_w) {
  TapRegion r;
  if (stride_w != 1 || stride_h <= 0) {
    return r;
  }
  bool any = false;
  for (size_t t = 0; t < taps.offset.size(); ++t) {
    if (taps.weight[t] == static_cast<acc_t>(0)) {
      continue;  // adds nothing (samples outside the map tap offset 0 with weight 0)
    }
    const int64_t row = taps.offset[t] / stride_h, col = taps.offset[t] % stride_h;
    r.row_begin = any ? std::min(r.row_begin, row) : row;
    r.row_end = any ? std::max(r.row_end, row + 1) : row + 1;
    r.col_begin = any ? std::min(r.col_begin, col) : col;
    r.col_end = any ? std::max(r.col_end, col + 1) : col + 1;
    any = true;
  }
  return r;
}

// Ask for the cache lines of a region of a later channel's plane: on NCHW maps each channel's taps hit
// a few lines in each of many rows, which the hardware prefetcher does not foresee.
template <typename scalar_t>
void prefetch_region(const scalar_t* plane, const TapRegion& r, int64_t stride_h) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t row = r.row_begin; row < r.row_end; ++row) {
    const scalar_t* p = plane + row * stride_h;
    for (int64_t col = r.col_begin; col < r.col_end; col += kLine) {
      __builtin_prefetch(p + col);
    }
    __builtin_prefetch(p + r.col_end - 1);
  }
}

// One box on NCHW maps, kTileChannels channels at a time: the box's region of those channel planes is
// copied into a small channels-last tile (row segments read contiguously), then pooled as on
// channels-last maps, the channel loop innermost and vectorised. Every output sums its taps in the
// same order as the other paths, so all layouts give the same bits.
template <typename scalar_t, typename acc_t>
void pool_through_tiles(const scalar_t* base, int64_t stride_c, int64_t stride_h, int64_t channels,
    const BoxTaps<acc_t>& taps, const TapRegion& region, int64_t bins, int64_t bin_stride, int64_t chan_stride,
    scalar_t* o) {
  const int64_t rows = region.row_end - region.row_begin, cols = region.col_end - region.col_begin;
  const int64_t n = taps.taps_per_bin;
  std::vector<int64_t> tile_offset(taps.offset.size());
  // Taps of weight 0 (samples outside the map, or on a pixel's row or column) may lie outside the
  // region: they read the tile's first pixel instead, adding 0 as before (for finite features).
  for (size_t t = 0; t < taps.offset.size(); ++t) {
    const int64_t row = taps.offset[t] / stride_h - region.row_begin, col = taps.offset[t] % stride_h - region.col_begin;
    const bool inside = taps.weight[t] != static_cast<acc_t>(0);
    tile_offset[t] = inside ? (row * cols + col) * kTileChannels : 0;
  }
  std::vector<acc_t> tile(rows * cols * kTileChannels);
  for (int64_t c0 = 0; c0 < channels; c0 += kTileChannels) {
    const int64_t count = std::min(kTileChannels, channels - c0);
    for (int64_t j = 0; j < kTileChannels && c0 + kTileChannels + j < channels; ++j) {
      prefetch_region(base + (c0 + kTileChannels + j) * stride_c, region, stride_h);
    }
    for (int64_t j = 0; j < count; ++j) {
      const scalar_t* plane = base + (c0 + j) * stride_c + region.row_begin * stride_h + region.col_begin;
      for (int64_t r = 0; r < rows; ++r) {
        acc_t* dst = tile.data() + r * cols * kTileChannels + j;
        for (int64_t x = 0; x < cols; ++x) {
          dst[x * kTileChannels] = static_cast<acc_t>(plane[r * stride_h + x]);
        }
      }
    }
    for (int64_t bin = 0; bin < bins; ++bin) {
      acc_t acc[kTileChannels] = {};
      for (int64_t t = bin * n; t < (bin + 1) * n; ++t) {
        const acc_t w = taps.weight[t];
        const acc_t* p = tile.data() + tile_offset[t];
        for (int64_t j = 0; j < kTileChannels; ++j) {
          acc[j] += w * p[j];
        }
      }
      for (int64_t j = 0; j < count; ++j) {
        o[bin * bin_stride + (c0 + j) * chan_stride] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

template <typename scalar_t, typename box_t>
void forward_impl(const std::vector<at::Tensor>& maps, const at::Tensor& boxes, const at::Tensor& batch_idx,
    const RoiAlignOptions& opt, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto levels = levels_of<const scalar_t>(maps);
  const int64_t num = boxes.size(0), channels = maps[0].size(1), batch = maps[0].size(0);
  const int64_t bins = opt.output_size * opt.output_size;
  const box_t* box_ptr = boxes.data_ptr<box_t>();
  const int64_t* idx_ptr = batch_idx.data_ptr<int64_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  // [K, S*S, C] or [K, C, S*S]: element (bin, c) of box k
  const int64_t bin_stride = opt.bin_major ? channels : 1, chan_stride = opt.bin_major ? 1 : bins;
  const int64_t grid = opt.sampling_ratio > 0 ? opt.sampling_ratio : 2;
  at::parallel_for(0, num, grain_for(channels * bins * 4 * grid * grid), [&](int64_t begin, int64_t end) {
    BoxTaps<acc_t> taps;
    std::vector<acc_t> acc(channels);
    for (int64_t k = begin; k < end; ++k) {
      scalar_t* o = out_ptr + k * bins * channels;
      const int lvl = box_taps<scalar_t>(box_ptr, idx_ptr, k, batch, levels, opt, taps);
      if (lvl < 0) {
        std::fill(o, o + bins * channels, static_cast<scalar_t>(0));
        continue;
      }
      const auto& L = levels[lvl];
      const scalar_t* base = L.data + idx_ptr[k] * L.stride_n;
      const int64_t n = taps.taps_per_bin;
      if (L.stride_c == 1) {  // channels-last: channel loop innermost, contiguous
        for (int64_t bin = 0; bin < bins; ++bin) {
          std::fill(acc.begin(), acc.end(), static_cast<acc_t>(0));
          for (int64_t t = bin * n; t < (bin + 1) * n; ++t) {
            const acc_t w = taps.weight[t];
            const scalar_t* p = base + taps.offset[t];
            for (int64_t c = 0; c < channels; ++c) {
              acc[c] += w * static_cast<acc_t>(p[c]);
            }
          }
          for (int64_t c = 0; c < channels; ++c) {
            o[bin * bin_stride + c * chan_stride] = static_cast<scalar_t>(acc[c]);
          }
        }
      } else if (const TapRegion region = tap_region(taps, L.stride_h, L.stride_w); !region.empty()) {
        pool_through_tiles(base, L.stride_c, L.stride_h, channels, taps, region, bins, bin_stride, chan_stride, o);
      } else {  // no tap of weight > 0, or a layout without unit column stride: one channel at a time
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* plane = base + c * L.stride_c;
          for (int64_t bin = 0; bin < bins; ++bin) {
            acc_t a = 0;
            for (int64_t t = bin * n; t < (bin + 1) * n; ++t) {
              a += taps.weight[t] * static_cast<acc_t>(plane[taps.offset[t]]);
            }
            o[bin * bin_stride + c * chan_stride] = static_cast<scalar_t>(a);
          }
        }
      }
    }
  });
}

// Taps per map pixel of this call (fixed sampling ratio: exact; adaptive: counted as 2 x 2).
double taps_per_pixel(const at::TensorList features, int64_t num, const RoiAlignOptions& opt) {
  const int64_t grid = opt.sampling_ratio > 0 ? opt.sampling_ratio : 2;
  double pixels = 0;
  for (const auto& f : features) {
    pixels += static_cast<double>(f.size(0)) * f.size(2) * f.size(3);
  }
  return pixels > 0 ? 4.0 * num * opt.output_size * opt.output_size * grid * grid / pixels : 0.0;
}

at::Tensor roi_align_multilevel_cpu(const at::TensorList features, const at::Tensor& boxes, const at::Tensor& batch_idx,
    int64_t output_size, int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level,
    int64_t min_level, bool bin_major) {
  const RoiAlignOptions opt{output_size, sampling_ratio, aligned, canonical_box_size, canonical_level, min_level, bin_major};
  check_roi_options(opt, features.size());
  check_roi_boxes(boxes, batch_idx);
  check_roi_features(features, boxes);
  TORCH_CHECK(boxes.device().is_cpu(), "boxes must be a CPU tensor, got ", boxes.device());
  const int64_t num = boxes.size(0), channels = features[0].size(1);
  at::Tensor out = empty_pooled(num, channels, opt, features[0].options());
  if (out.numel() == 0) {
    return out;
  }
  const bool to_channels_last = taps_per_pixel(features, num, opt) >= kChannelsLastMinTapsPerPixel;
  std::vector<at::Tensor> maps;
  for (const auto& f : features) {
    maps.push_back(to_channels_last && f.stride(1) != 1 ? f.contiguous(at::MemoryFormat::ChannelsLast) : f);
  }
  const at::Tensor boxes_c = boxes.contiguous(), idx_c = batch_idx.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "roi_align_multilevel_cpu", [&] {
    if (boxes.scalar_type() == at::kFloat) {
      forward_impl<scalar_t, float>(maps, boxes_c, idx_c, opt, out);
    } else {
      forward_impl<scalar_t, double>(maps, boxes_c, idx_c, opt, out);
    }
  });
  return out;
}

// Channels per parallel chunk of the channels-last backward: a whole number of AVX-512 float vectors.
constexpr int64_t kChannelBlock = 16;

// NCHW gradient maps: each chunk owns whole channel planes, grad in the layout bin_major names.
// Channels-last gradient maps: each chunk owns a block of channels of every pixel, the channel loop
// innermost and vectorised; grad is bin-major [K, S*S, C] contiguous.
template <typename scalar_t, typename box_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& batch_idx,
    const std::vector<at::Tensor>& grad_maps, const RoiAlignOptions& opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto levels = levels_of<acc_t>(grad_maps);
  const int64_t num = boxes.size(0), channels = grad_maps[0].size(1), batch = grad_maps[0].size(0);
  const int64_t bins = opt.output_size * opt.output_size;
  const box_t* box_ptr = boxes.data_ptr<box_t>();
  const int64_t* idx_ptr = batch_idx.data_ptr<int64_t>();
  const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
  const int64_t bin_stride = opt.bin_major ? channels : 1, chan_stride = opt.bin_major ? 1 : bins;
  const int64_t grid = opt.sampling_ratio > 0 ? opt.sampling_ratio : 2;
  const int64_t block = channels_last ? kChannelBlock : 1;
  const int64_t chunks = (channels + block - 1) / block;
  at::parallel_for(0, chunks, grain_for(num * bins * 4 * grid * grid * block), [&](int64_t b0, int64_t b1) {
    const int64_t c_begin = b0 * block, c_end = std::min(channels, b1 * block);
    BoxTaps<acc_t> taps;
    for (int64_t k = 0; k < num; ++k) {
      const int lvl = box_taps<scalar_t>(box_ptr, idx_ptr, k, batch, levels, opt, taps);
      if (lvl < 0) {
        continue;
      }
      const auto& L = levels[lvl];
      acc_t* base = L.data + idx_ptr[k] * L.stride_n;
      const int64_t n = taps.taps_per_bin;
      if (channels_last) {
        for (int64_t bin = 0; bin < bins; ++bin) {
          const scalar_t* g = grad_ptr + (k * bins + bin) * channels;
          for (int64_t t = bin * n; t < (bin + 1) * n; ++t) {
            const acc_t w = taps.weight[t];
            acc_t* p = base + taps.offset[t];
            for (int64_t c = c_begin; c < c_end; ++c) {
              p[c] += w * static_cast<acc_t>(g[c]);
            }
          }
        }
        continue;
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        acc_t* plane = base + c * L.stride_c;
        const scalar_t* g = grad_ptr + k * bins * channels + c * chan_stride;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const acc_t gv = static_cast<acc_t>(g[bin * bin_stride]);
          for (int64_t t = bin * n; t < (bin + 1) * n; ++t) {
            plane[taps.offset[t]] += taps.weight[t] * gv;
          }
        }
      }
    }
  });
}

std::vector<at::Tensor> roi_align_multilevel_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
    const at::Tensor& batch_idx, int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    int64_t output_size, int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level,
    int64_t min_level, bool bin_major, bool channels_last) {
  const RoiAlignOptions opt{output_size, sampling_ratio, aligned, canonical_box_size, canonical_level, min_level, bin_major};
  check_roi_backward(grad, boxes, batch_idx, channels, heights, widths, opt);
  TORCH_CHECK(boxes.device().is_cpu() && grad.device().is_cpu(), "grad and boxes must be CPU tensors");
  const int64_t s = output_size, num = boxes.size(0);
  const auto acc_options = grad.options().dtype(at::toOpMathType(grad.scalar_type()));
  std::vector<at::Tensor> acc_maps = zero_grad_maps(batch_size, channels, heights, widths, acc_options, channels_last);
  if (num > 0 && channels > 0) {
    const at::Tensor boxes_c = boxes.contiguous(), idx_c = batch_idx.contiguous();
    // The channels-last kernel reads one box-bin's channels contiguously: bin-major grad.
    const at::Tensor grad_c = channels_last && !bin_major
        ? grad.reshape({num, channels, s * s}).transpose(1, 2).contiguous()
        : grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_multilevel_backward_cpu", [&] {
      if (boxes.scalar_type() == at::kFloat) {
        backward_impl<scalar_t, float>(grad_c, boxes_c, idx_c, acc_maps, opt, channels_last);
      } else {
        backward_impl<scalar_t, double>(grad_c, boxes_c, idx_c, acc_maps, opt, channels_last);
      }
    });
  }
  std::vector<at::Tensor> out;
  for (auto& m : acc_maps) {  // .to keeps the memory format
    out.push_back(m.scalar_type() == grad.scalar_type() ? m : m.to(grad.scalar_type()));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffdet, CPU, m) {
  m.impl("roi_align_multilevel", &roi_align_multilevel_cpu);
  m.impl("_roi_align_multilevel_backward", &roi_align_multilevel_backward_cpu);
}

}  // namespace diffdet
