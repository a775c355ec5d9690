// CPU kernels of diffdet::roi_align_multilevel and its backward.
//
// Samples. A sample's four bilinear taps are products of a row tap and a column tap (axis_tap in
// roi_align_common.h), so a box keeps size * grid sample rows and columns (BoxSamples) instead of
// 4 * size^2 * grid^2 taps. Every path sums a bin's taps in one order (sample row, sample column, then
// the four corners), so every layout gives the same bits. Samples outside the map weigh 0 and are
// skipped, as torchvision skips them.
//
// Forward. Channels-last maps (channel stride 1): parallel over boxes; each box is pooled a block of
// channels at a time with the block's accumulators in registers, the channel loop innermost and
// vectorised. Other layouts (NCHW): parallel over (image, block of kPlaneChannels channels); per level
// the blocks of pixels that image's boxes on that level sample are copied from the block's planes into
// a channels-last scratch (each map element read at most once per call, in order, however many boxes
// share it), and each of those boxes is pooled from the scratch as from channels-last maps.
// Backward, the same two ways round: on channels-last maps parallel over blocks of channels, each
// owning those channels of every pixel; on NCHW maps each (image, channel block) item scatters into a
// zeroed scratch, then writes it into its planes. No two threads write one element and every element
// sums its terms in box order from 0: deterministic, race-free, the same bits in both layouts. The
// gradient takes the layout of the forward's maps.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/roi_align_common.h"
#include "common/roi_align_host.h"

// The vectorised loops are compiled for AVX2 and for the baseline ISA, and the loader picks one (an
// ifunc): the build stays portable (no -march) and AVX2 machines get 8-float vectors. Only "avx2" is
// named, not FMA, so no multiply-add is fused and both versions give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && !defined(__AVX2__)
#define DIFFDET_X86_CLONES
#define DIFFDET_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#include <immintrin.h>
#else
#define DIFFDET_VECTOR_CLONES
#endif

namespace diffdet {
namespace {

// Channels of the NCHW forward's channels-last scratch, and of a channels-last backward chunk.
constexpr int64_t kPlaneChannels = 16;
// Pixels of a row the NCHW paths move between planes and scratch together, or skip (no box samples them).
constexpr int64_t kColumnBlock = 8;
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

// Sample rows and columns of one box on its level: bin p's samples are rows[p * grid_h ...] and
// cols[p * grid_w ...].
template <typename acc_t>
struct BoxSamples {
  std::vector<AxisTap<acc_t>> rows, cols;
  int size = 0, grid_h = 0, grid_w = 0;
  acc_t inv_count = 0;
};

// Level index of box k, or -1 when the box pools to zero (undefined level, batch index out of range).
template <typename box_t>
int box_level(const box_t* boxes, const int64_t* batch_idx, int64_t k, int64_t batch, int num_levels,
    const RoiAlignOptions& opt) {
  const box_t* b = boxes + 4 * k;
  const int lvl = assign_level<box_t>(b[0], b[1], b[2], b[3], static_cast<box_t>(opt.canonical_box_size),
      static_cast<int>(opt.canonical_level), static_cast<int>(opt.min_level), num_levels);
  return lvl < 0 || batch_idx[k] < 0 || batch_idx[k] >= batch ? -1 : lvl;
}

// Samples of box k on level `lvl`, an H x W map.
template <typename scalar_t, typename box_t, typename acc_t>
void box_samples(const box_t* boxes, int64_t k, int lvl, int64_t height, int64_t width, const RoiAlignOptions& opt,
    BoxSamples<acc_t>& s) {
  const box_t* b = boxes + 4 * k;
  // detectron2's ROIAlign casts the rois to the features' dtype before sampling.
  auto round = [](box_t v) { return static_cast<acc_t>(static_cast<scalar_t>(v)); };
  s.size = static_cast<int>(opt.output_size);
  const auto g = roi_geometry<acc_t>(round(b[0]), round(b[1]), round(b[2]), round(b[3]),
      static_cast<acc_t>(level_scale(opt.min_level, lvl)), s.size, static_cast<int>(opt.sampling_ratio), opt.aligned);
  s.grid_h = g.grid_h;
  s.grid_w = g.grid_w;
  s.inv_count = g.inv_count;
  s.rows.resize(static_cast<size_t>(s.size) * g.grid_h);
  s.cols.resize(static_cast<size_t>(s.size) * g.grid_w);
  for (int p = 0; p < s.size; ++p) {
    for (int i = 0; i < g.grid_h; ++i) {
      s.rows[p * g.grid_h + i] = axis_tap(sample_coord(g.start_y, g.bin_h, p, i, g.grid_h), height);
    }
    for (int i = 0; i < g.grid_w; ++i) {
      s.cols[p * g.grid_w + i] = axis_tap(sample_coord(g.start_x, g.bin_w, p, i, g.grid_w), width);
    }
  }
}

// Half-open range of pixels the inside samples of one axis touch (empty: begin == end == 0).
template <typename acc_t>
std::pair<int64_t, int64_t> pixel_span(const std::vector<AxisTap<acc_t>>& taps) {
  int64_t begin = 0, end = 0;
  for (const auto& t : taps) {
    if (t.inside) {
      begin = end == 0 ? t.low : std::min(begin, t.low);
      end = std::max(end, t.high + 1);
    }
  }
  return {begin, end};
}

// Calls tap(offset, weight) for the four taps of every sample of bin (ph, pw) inside the map, in the
// order every path sums them; offsets are relative to pixel (row0, col0) of a map with these strides.
template <typename acc_t, typename Fn>
inline void for_each_tap(const BoxSamples<acc_t>& s, int ph, int pw, int64_t row0, int64_t col0, int64_t stride_h,
    int64_t stride_w, const Fn& tap) {
  for (int iy = 0; iy < s.grid_h; ++iy) {
    const AxisTap<acc_t>& r = s.rows[ph * s.grid_h + iy];
    if (!r.inside) {
      continue;
    }
    for (int ix = 0; ix < s.grid_w; ++ix) {
      const AxisTap<acc_t>& c = s.cols[pw * s.grid_w + ix];
      if (!c.inside) {
        continue;
      }
      const int64_t low = (r.low - row0) * stride_h, high = (r.high - row0) * stride_h;
      const int64_t left = (c.low - col0) * stride_w, right = (c.high - col0) * stride_w;
      // Four calls, not a loop over corners: GCC vectorises the callers' channel loops only this way.
      tap(low + left, tap_weight(r.low_weight, c.low_weight, s.inv_count));
      tap(low + right, tap_weight(r.low_weight, c.high_weight, s.inv_count));
      tap(high + left, tap_weight(r.high_weight, c.low_weight, s.inv_count));
      tap(high + right, tap_weight(r.high_weight, c.high_weight, s.inv_count));
    }
  }
}

// acc[0, Block) += w * p[0, Block)
template <int Block, typename scalar_t, typename acc_t>
inline void add_tap(acc_t* acc, acc_t w, const scalar_t* p) {
  // Kept a loop for the loop vectoriser: fully unrolled first, 16 lanes or fewer stay scalar.
#pragma GCC unroll 1
  for (int j = 0; j < Block; ++j) {
    acc[j] += w * static_cast<acc_t>(p[j]);
  }
}

// Pools channels [0, Block) of one box: `base` points at channel 0 of pixel (row0, col0) of a map
// whose channel stride is 1; output element (bin, c) goes to out[bin * bin_stride + c * chan_stride].
// The accumulators stay in registers across the box's taps.
template <int Block, typename scalar_t, typename acc_t>
DIFFDET_VECTOR_CLONES void pool_channel_block(const scalar_t* base, int64_t stride_h, int64_t stride_w, int64_t row0,
    int64_t col0, const BoxSamples<acc_t>& s, scalar_t* out, int64_t bin_stride, int64_t chan_stride) {
  for (int ph = 0; ph < s.size; ++ph) {
    for (int pw = 0; pw < s.size; ++pw) {
      acc_t acc[Block] = {};
      for_each_tap(s, ph, pw, row0, col0, stride_h, stride_w,
          [&](int64_t offset, acc_t w) { add_tap<Block>(acc, w, base + offset); });
      scalar_t* o = out + (ph * s.size + pw) * bin_stride;
      for (int j = 0; j < Block; ++j) {
        o[j * chan_stride] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// Pools channels [0, channels) of one box (arguments as pool_channel_block), in blocks of 256 bytes
// of accumulators, then of one vector, then one at a time.
template <typename scalar_t, typename acc_t>
void pool_channels(const scalar_t* base, int64_t stride_h, int64_t stride_w, int64_t row0, int64_t col0,
    const BoxSamples<acc_t>& s, int64_t channels, scalar_t* out, int64_t bin_stride, int64_t chan_stride) {
  constexpr int kWide = 256 / sizeof(acc_t), kVector = 32 / sizeof(acc_t);
  int64_t c = 0;
  for (; c + kWide <= channels; c += kWide) {
    pool_channel_block<kWide>(base + c, stride_h, stride_w, row0, col0, s, out + c * chan_stride, bin_stride, chan_stride);
  }
  for (; c + kVector <= channels; c += kVector) {
    pool_channel_block<kVector>(base + c, stride_h, stride_w, row0, col0, s, out + c * chan_stride, bin_stride, chan_stride);
  }
  for (; c < channels; ++c) {
    pool_channel_block<1>(base + c, stride_h, stride_w, row0, col0, s, out + c * chan_stride, bin_stride, chan_stride);
  }
}

// Copies `channels` (<= kPlaneChannels) planes of one row of pixels (src: pixel 0 of the first plane)
// into a row of a channels-last scratch (dst: [cols][kPlaneChannels]), the column blocks flagged in
// `needed` only (kColumnBlock pixels each).
template <typename scalar_t>
DIFFDET_VECTOR_CLONES void copy_row_elementwise(const scalar_t* src, int64_t stride_c, int64_t stride_w,
    int64_t channels, int64_t cols, const uint8_t* needed, scalar_t* dst) {
  for (int64_t x0 = 0; x0 < cols; x0 += kColumnBlock) {
    if (!needed[x0 / kColumnBlock]) {
      continue;
    }
    const int64_t x1 = std::min(cols, x0 + kColumnBlock);
    for (int64_t j = 0; j < channels; ++j) {
      for (int64_t x = x0; x < x1; ++x) {
        dst[x * kPlaneChannels + j] = src[j * stride_c + x * stride_w];
      }
    }
  }
}

#ifdef DIFFDET_X86_CLONES
// copy_row_elementwise for float planes with unit column stride, on AVX2 machines: each full block of
// 8 pixels x 8 planes is transposed in registers (4x fewer instructions than the element loop, whose
// strided stores the vectoriser cannot merge).
static_assert(kColumnBlock == 8, "one 8 x 8 transpose per column block");
__attribute__((target("avx2"))) void copy_row_avx2(
    const float* src, int64_t stride_c, int64_t channels, int64_t cols, const uint8_t* needed, float* dst) {
  for (int64_t x0 = 0; x0 < cols; x0 += kColumnBlock) {
    if (!needed[x0 / kColumnBlock]) {
      continue;
    }
    const int64_t x1 = std::min(cols, x0 + kColumnBlock);
    int64_t j0 = 0;
    for (; x1 - x0 == 8 && j0 + 8 <= channels; j0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) {
        r[i] = _mm256_loadu_ps(src + (j0 + i) * stride_c + x0);
      }
      for (int i = 0; i < 8; i += 2) {  // pairs of planes interleaved
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {  // r[i + q]: pixels q and q + 4 of planes i .. i + 3
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int q = 0; q < 4; ++q) {  // 128-bit halves: planes 0-3 from r[q], planes 4-7 from r[q + 4]
        _mm256_storeu_ps(dst + (x0 + q) * kPlaneChannels + j0, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
        _mm256_storeu_ps(dst + (x0 + q + 4) * kPlaneChannels + j0, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
      }
    }
    for (int64_t j = j0; j < channels; ++j) {
      for (int64_t x = x0; x < x1; ++x) {
        dst[x * kPlaneChannels + j] = src[j * stride_c + x];
      }
    }
  }
}
#endif

// Copies `channels` planes of a rows x cols window (src: its top-left element of the first plane) into
// a channels-last scratch [rows][cols][kPlaneChannels], the blocks `needed` flags ([rows][column
// blocks]) only.
template <typename scalar_t>
void copy_planes_to_scratch(const scalar_t* src, int64_t stride_c, int64_t stride_h, int64_t stride_w,
    int64_t channels, int64_t rows, int64_t cols, const uint8_t* needed, scalar_t* scratch) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  for (int64_t y = 0; y < rows; ++y) {
    const scalar_t* row = src + y * stride_h;
    scalar_t* dst = scratch + y * cols * kPlaneChannels;
#ifdef DIFFDET_X86_CLONES
    if constexpr (std::is_same_v<scalar_t, float>) {
      static const bool avx2 = __builtin_cpu_supports("avx2");
      if (avx2 && stride_w == 1) {
        copy_row_avx2(row, stride_c, channels, cols, needed + y * blocks, dst);
        continue;
      }
    }
#endif
    copy_row_elementwise(row, stride_c, stride_w, channels, cols, needed + y * blocks, dst);
  }
}

// Boxes of one image on one level (NCHW path), the rectangle their samples cover, and which blocks of
// kColumnBlock pixels of each of its rows they sample: the scratch copy skips the others.
struct BoxGroup {
  std::vector<int64_t> boxes;
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;  // half-open
  std::vector<uint8_t> needed;                                    // [rows][column blocks]
};

// Pixels of the largest rectangle of `groups` (at least 1): the scratch a work item needs.
inline int64_t largest_rect(const std::vector<BoxGroup>& groups) {
  int64_t pixels = 1;
  for (const BoxGroup& g : groups) {
    pixels = std::max(pixels, (g.row_end - g.row_begin) * (g.col_end - g.col_begin));
  }
  return pixels;
}

// Pixels a box's samples cover: rows and columns, half-open.
struct PixelRect {
  int64_t row_begin, row_end, col_begin, col_end;
  bool empty() const { return row_end <= row_begin || col_end <= col_begin; }
};

template <typename acc_t>
PixelRect sampled_rect(const BoxSamples<acc_t>& s) {
  const auto [row_begin, row_end] = pixel_span(s.rows);
  const auto [col_begin, col_end] = pixel_span(s.cols);
  return {row_begin, row_end, col_begin, col_end};
}

// Groups the boxes k with level_of_box[k] >= 0 by (image, level).
template <typename scalar_t, typename box_t, typename T>
std::vector<BoxGroup> group_boxes(const std::vector<int>& level_of_box, const int64_t* batch_idx, const box_t* boxes,
    const std::vector<Level<T>>& levels, int64_t batch, const RoiAlignOptions& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_levels = static_cast<int64_t>(levels.size());
  std::vector<BoxGroup> groups(batch * num_levels);
  std::vector<PixelRect> rects(level_of_box.size());
  BoxSamples<acc_t> s;
  for (size_t k = 0; k < level_of_box.size(); ++k) {
    const int lvl = level_of_box[k];
    if (lvl < 0) {
      continue;
    }
    box_samples<scalar_t>(boxes, k, lvl, levels[lvl].height, levels[lvl].width, opt, s);
    rects[k] = sampled_rect(s);
    BoxGroup& g = groups[batch_idx[k] * num_levels + lvl];
    const PixelRect& r = rects[k];
    if (!r.empty()) {
      const bool first = g.row_end == g.row_begin;
      g.row_begin = first ? r.row_begin : std::min(g.row_begin, r.row_begin);
      g.row_end = std::max(g.row_end, r.row_end);
      g.col_begin = first ? r.col_begin : std::min(g.col_begin, r.col_begin);
      g.col_end = std::max(g.col_end, r.col_end);
    }
    g.boxes.push_back(static_cast<int64_t>(k));
  }
  for (BoxGroup& g : groups) {
    const int64_t blocks = (g.col_end - g.col_begin + kColumnBlock - 1) / kColumnBlock;
    g.needed.assign((g.row_end - g.row_begin) * blocks, 0);
    for (const int64_t k : g.boxes) {
      const PixelRect& r = rects[k];
      for (int64_t y = r.row_begin; !r.empty() && y < r.row_end; ++y) {
        uint8_t* row = g.needed.data() + (y - g.row_begin) * blocks;
        std::fill(row + (r.col_begin - g.col_begin) / kColumnBlock, row + (r.col_end - 1 - g.col_begin) / kColumnBlock + 1, 1);
      }
    }
  }
  return groups;
}

// The NCHW paths' work: calls fn(b, l, group, c0, count, scratch) for every (image b, block of
// channels [c0, c0 + count)) and every level l holding boxes of image b (groups[b * levels + l]), in
// parallel over (image, block); scratch is the thread's uninitialised buffer of T, large enough for
// [rows][cols][kPlaneChannels] of any group's rectangle.
template <typename T, typename Fn>
void for_each_plane_block(const std::vector<BoxGroup>& groups, int64_t num_levels, int64_t batch, int64_t channels,
    const Fn& fn) {
  const int64_t blocks = (channels + kPlaneChannels - 1) / kPlaneChannels;
  const int64_t scratch_pixels = largest_rect(groups);
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const std::unique_ptr<T[]> scratch(new T[scratch_pixels * kPlaneChannels]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks, c0 = (item % blocks) * kPlaneChannels;
      for (int64_t l = 0; l < num_levels; ++l) {
        const BoxGroup& g = groups[b * num_levels + l];
        if (!g.boxes.empty()) {
          fn(b, l, g, c0, std::min(kPlaneChannels, channels - c0), scratch.get());
        }
      }
    }
  });
}

// The NCHW forward: see the file comment.
template <typename scalar_t, typename box_t>
void pool_through_scratch(const std::vector<Level<const scalar_t>>& levels, const std::vector<BoxGroup>& groups,
    const box_t* box_ptr, const RoiAlignOptions& opt, int64_t batch, int64_t channels, int64_t bin_stride,
    int64_t chan_stride, scalar_t* out_ptr) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = opt.output_size * opt.output_size;
  for_each_plane_block<scalar_t>(groups, static_cast<int64_t>(levels.size()), batch, channels,
      [&](int64_t b, int64_t l, const BoxGroup& g, int64_t c0, int64_t count, scalar_t* scratch) {
        const auto& L = levels[l];
        const int64_t rows = g.row_end - g.row_begin, cols = g.col_end - g.col_begin;
        copy_planes_to_scratch(L.data + b * L.stride_n + c0 * L.stride_c + g.row_begin * L.stride_h + g.col_begin * L.stride_w,
            L.stride_c, L.stride_h, L.stride_w, count, rows, cols, g.needed.data(), scratch);
        BoxSamples<acc_t> s;
        for (const int64_t k : g.boxes) {
          box_samples<scalar_t>(box_ptr, k, static_cast<int>(l), L.height, L.width, opt, s);
          scalar_t* o = out_ptr + k * bins * channels + c0 * chan_stride;
          if (count == kPlaneChannels) {  // one block: half the per-sample work of two vector blocks
            pool_channel_block<kPlaneChannels>(scratch, cols * kPlaneChannels, kPlaneChannels, g.row_begin, g.col_begin,
                s, o, bin_stride, chan_stride);
          } else {
            pool_channels(scratch, cols * kPlaneChannels, kPlaneChannels, g.row_begin, g.col_begin, s, count, o,
                bin_stride, chan_stride);
          }
        }
      });
}

template <typename scalar_t, typename box_t>
void forward_impl(const std::vector<at::Tensor>& maps, const at::Tensor& boxes, const at::Tensor& batch_idx,
    const RoiAlignOptions& opt, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto levels = levels_of<const scalar_t>(maps);
  const int num_levels = static_cast<int>(levels.size());
  const int64_t num = boxes.size(0), channels = maps[0].size(1), batch = maps[0].size(0);
  const int64_t bins = opt.output_size * opt.output_size;
  const box_t* box_ptr = boxes.data_ptr<box_t>();
  const int64_t* idx_ptr = batch_idx.data_ptr<int64_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  // [K, S*S, C] or [K, C, S*S]: element (bin, c) of box k
  const int64_t bin_stride = opt.bin_major ? channels : 1, chan_stride = opt.bin_major ? 1 : bins;
  const int64_t grid = opt.sampling_ratio > 0 ? opt.sampling_ratio : 2;
  // Boxes on channels-last levels are pooled here; the others wait for the scratch path.
  std::vector<int> deferred_level(num, -1);
  at::parallel_for(0, num, grain_for(channels * bins * 4 * grid * grid), [&](int64_t begin, int64_t end) {
    BoxSamples<acc_t> s;
    for (int64_t k = begin; k < end; ++k) {
      scalar_t* o = out_ptr + k * bins * channels;
      const int lvl = box_level(box_ptr, idx_ptr, k, batch, num_levels, opt);
      if (lvl < 0) {
        std::fill(o, o + bins * channels, static_cast<scalar_t>(0));
        continue;
      }
      const auto& L = levels[lvl];
      if (L.stride_c != 1) {
        deferred_level[k] = lvl;
        continue;
      }
      box_samples<scalar_t>(box_ptr, k, lvl, L.height, L.width, opt, s);
      pool_channels(L.data + idx_ptr[k] * L.stride_n, L.stride_h, L.stride_w, 0, 0, s, channels, o, bin_stride, chan_stride);
    }
  });
  if (std::any_of(deferred_level.begin(), deferred_level.end(), [](int lvl) { return lvl >= 0; })) {
    const auto groups = group_boxes<scalar_t>(deferred_level, idx_ptr, box_ptr, levels, batch, opt);
    pool_through_scratch(levels, groups, box_ptr, opt, batch, channels, bin_stride, chan_stride, out_ptr);
  }
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
  const std::vector<at::Tensor> maps(features.begin(), features.end());
  const at::Tensor boxes_c = boxes.contiguous(), idx_c = batch_idx.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "roi_align_multilevel_cpu", [&] {
    dispatch_box_type(boxes, [&](auto box) { forward_impl<scalar_t, decltype(box)>(maps, boxes_c, idx_c, opt, out); });
  });
  return out;
}

// p[c] += w * g[c] for c in [c_begin, c_end)
template <typename scalar_t, typename acc_t>
inline void add_scaled(acc_t* p, acc_t w, const scalar_t* g, int64_t c_begin, int64_t c_end) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    p[c] += w * static_cast<acc_t>(g[c]);
  }
}

// Adds the gradient of one box to channels [c_begin, c_end) of a channels-last map (`base`: channel 0 of
// pixel (row0, col0)); grad holds the box's bins, `channels` apart.
template <typename scalar_t, typename acc_t>
DIFFDET_VECTOR_CLONES void scatter_channels(acc_t* base, int64_t stride_h, int64_t stride_w, int64_t row0, int64_t col0,
    const BoxSamples<acc_t>& s, const scalar_t* grad, int64_t channels, int64_t c_begin, int64_t c_end) {
  for (int ph = 0; ph < s.size; ++ph) {
    for (int pw = 0; pw < s.size; ++pw) {
      const scalar_t* g = grad + (ph * s.size + pw) * channels;
      for_each_tap(s, ph, pw, row0, col0, stride_h, stride_w,
          [&](int64_t offset, acc_t w) { add_scaled(base + offset, w, g, c_begin, c_end); });
    }
  }
}

// Zeroes the column blocks `needed` flags of a channels-last scratch [rows][cols][kPlaneChannels].
template <typename T>
void zero_needed_blocks(T* scratch, int64_t rows, int64_t cols, const uint8_t* needed) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  for (int64_t y = 0; y < rows; ++y) {
    for (int64_t x0 = 0; x0 < cols; x0 += kColumnBlock) {
      if (needed[y * blocks + x0 / kColumnBlock]) {
        std::fill(scratch + (y * cols + x0) * kPlaneChannels,
            scratch + (y * cols + std::min(cols, x0 + kColumnBlock)) * kPlaneChannels, static_cast<T>(0));
      }
    }
  }
}

// Writes `channels` lanes of the needed column blocks of a channels-last scratch [rows][cols]
// [kPlaneChannels] into planes (dst: the window's top-left element of the first plane): the inverse of
// copy_planes_to_scratch.
template <typename T>
DIFFDET_VECTOR_CLONES void copy_scratch_to_planes(const T* scratch, T* dst, int64_t stride_c, int64_t stride_h,
    int64_t stride_w, int64_t channels, int64_t rows, int64_t cols, const uint8_t* needed) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  for (int64_t y = 0; y < rows; ++y) {
    for (int64_t x0 = 0; x0 < cols; x0 += kColumnBlock) {
      if (!needed[y * blocks + x0 / kColumnBlock]) {
        continue;
      }
      const int64_t x1 = std::min(cols, x0 + kColumnBlock);
      for (int64_t j = 0; j < channels; ++j) {
        for (int64_t x = x0; x < x1; ++x) {
          dst[j * stride_c + y * stride_h + x * stride_w] = scratch[(y * cols + x) * kPlaneChannels + j];
        }
      }
    }
  }
}

// The NCHW backward: parallel over (image, block of kPlaneChannels channels) as the forward; per level
// the image's boxes on it scatter into a zeroed channels-last scratch (vectorised over the block's
// channels), whose sampled column blocks are then written into the block's planes.
template <typename scalar_t, typename box_t, typename acc_t>
void scatter_through_scratch(const std::vector<Level<acc_t>>& levels, const std::vector<BoxGroup>& groups,
    const box_t* box_ptr, const RoiAlignOptions& opt, int64_t batch, int64_t channels, const scalar_t* grad_ptr) {
  const int64_t bins = opt.output_size * opt.output_size;
  for_each_plane_block<acc_t>(groups, static_cast<int64_t>(levels.size()), batch, channels,
      [&](int64_t b, int64_t l, const BoxGroup& g, int64_t c0, int64_t count, acc_t* scratch) {
        const auto& L = levels[l];
        const int64_t rows = g.row_end - g.row_begin, cols = g.col_end - g.col_begin;
        zero_needed_blocks(scratch, rows, cols, g.needed.data());
        BoxSamples<acc_t> s;
        for (const int64_t k : g.boxes) {
          box_samples<scalar_t>(box_ptr, k, static_cast<int>(l), L.height, L.width, opt, s);
          scatter_channels(scratch, cols * kPlaneChannels, kPlaneChannels, g.row_begin, g.col_begin, s,
              grad_ptr + k * bins * channels + c0, channels, 0, count);
        }
        copy_scratch_to_planes(scratch,
            L.data + b * L.stride_n + c0 * L.stride_c + g.row_begin * L.stride_h + g.col_begin * L.stride_w, L.stride_c,
            L.stride_h, L.stride_w, count, rows, cols, g.needed.data());
      });
}

// grad is bin-major [K, S*S, C] contiguous. Channels-last gradient maps: parallel over blocks of
// kPlaneChannels channels, each owning those channels of every pixel, the channel loop innermost and
// vectorised. NCHW maps: scatter_through_scratch. Either way no two threads write one element and
// every element sums its terms in box order, from 0: deterministic, and the same bits in both layouts.
template <typename scalar_t, typename box_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& batch_idx,
    const std::vector<at::Tensor>& grad_maps, const RoiAlignOptions& opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto levels = levels_of<acc_t>(grad_maps);
  const int num_levels = static_cast<int>(levels.size());
  const int64_t num = boxes.size(0), channels = grad_maps[0].size(1), batch = grad_maps[0].size(0);
  const int64_t bins = opt.output_size * opt.output_size;
  const box_t* box_ptr = boxes.data_ptr<box_t>();
  const int64_t* idx_ptr = batch_idx.data_ptr<int64_t>();
  const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
  if (!channels_last) {
    std::vector<int> level_of_box(num);
    for (int64_t k = 0; k < num; ++k) {
      level_of_box[k] = box_level(box_ptr, idx_ptr, k, batch, num_levels, opt);
    }
    const auto groups = group_boxes<scalar_t>(level_of_box, idx_ptr, box_ptr, levels, batch, opt);
    scatter_through_scratch(levels, groups, box_ptr, opt, batch, channels, grad_ptr);
    return;
  }
  const int64_t grid = opt.sampling_ratio > 0 ? opt.sampling_ratio : 2;
  const int64_t chunks = (channels + kPlaneChannels - 1) / kPlaneChannels;
  at::parallel_for(0, chunks, grain_for(num * bins * 4 * grid * grid * kPlaneChannels), [&](int64_t b0, int64_t b1) {
    const int64_t c_begin = b0 * kPlaneChannels, c_end = std::min(channels, b1 * kPlaneChannels);
    BoxSamples<acc_t> s;
    for (int64_t k = 0; k < num; ++k) {
      const int lvl = box_level(box_ptr, idx_ptr, k, batch, num_levels, opt);
      if (lvl < 0) {
        continue;
      }
      const auto& L = levels[lvl];
      box_samples<scalar_t>(box_ptr, k, lvl, L.height, L.width, opt, s);
      scatter_channels(L.data + idx_ptr[k] * L.stride_n, L.stride_h, L.stride_w, 0, 0, s,
          grad_ptr + k * bins * channels, channels, c_begin, c_end);
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
    // Both kernels read one box-bin's channels contiguously: bin-major grad.
    const at::Tensor grad_c = !bin_major
        ? grad.reshape({num, channels, s * s}).transpose(1, 2).contiguous()
        : grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_multilevel_backward_cpu", [&] {
      dispatch_box_type(boxes, [&](auto box) {
        backward_impl<scalar_t, decltype(box)>(grad_c, boxes_c, idx_c, acc_maps, opt, channels_last);
      });
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
