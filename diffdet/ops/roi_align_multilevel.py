"""Multi-level RoIAlign (detectron2's ``ROIPooler``) in one op, and its plain-PyTorch reference.

Each box is pooled from one FPN level, chosen inside the op by FPN Eqn. 1 as detectron2 writes it:
``level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))``, clamped to the
levels given, computed in the boxes' dtype. A box whose level is undefined (negative area or a NaN
coordinate) pools to zeros, as in detectron2 and torchvision, where such a level matches no level.
Pooling is torchvision's RoIAlign: ``S x S`` bins, ``sampling_ratio`` samples per bin side (0:
``ceil(bin size)``, adaptive, capped at ``MAX_ADAPTIVE_GRID``; none for a negative size), bilinear
samples; a sample outside ``[-1, H] x [-1, W]`` adds nothing and reads no pixel (so a level with H or
W = 0 pools to zeros, and a non-finite pixel reaches only the samples that tap it); ``aligned=True``
shifts by half a pixel. As detectron2's ``ROIAlign`` does, the box coordinates are rounded to the
features' dtype before sampling; sums are accumulated in float32 (float64 for float64 features).

Differentiable w.r.t. the features (not the boxes). The forward and the CPU backward are
deterministic; the CUDA backward adds with atomics, so under ``torch.use_deterministic_algorithms(True)``
the backward of CUDA inputs differentiates the reference instead (deterministic there). Only the
backward changes: the CUDA forward stays the kernel (no host sync, CUDA-graph capturable) in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffdet import _extension
from diffdet.ops import _backend, _checks

_OP = "roi_align_multilevel"
_PREFERRED = {"cpu": "compiled", "cuda": "compiled"}

MAX_LEVELS = 8  # csrc/common/roi_align_common.h: kMaxLevels (the CUDA kernel passes levels by value)
MAX_ADAPTIVE_GRID = 64  # csrc/common/roi_align_common.h: kMaxAdaptiveGrid (bounds work per bin)


def roi_align_multilevel(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    min_level: int = 2,
    bin_major: bool = False,
) -> torch.Tensor:
    """Pool an ``S x S`` feature grid per box from its FPN level, in one op for all levels.

    Args:
        features (Sequence[Tensor[B, C, Hl, Wl]]): L feature maps (1 <= L <= 8), ``features[i]`` at
            stride ``2 ** (min_level + i)`` input pixels (P2-P5: strides 4, 8, 16, 32). Same B, C,
            dtype (float16/bfloat16/float32/float64) and device; any memory layout (NCHW or
            channels-last).
        boxes (Tensor[K, 4]): xyxy boxes in input-image pixels (not clipped; outside the image is
            fine); float32 or float64; finite (checked for CPU tensors).
        batch_idx (Tensor[K]): int64 image index of each box in [0, B) (checked on CPU; on CUDA a box
            with an index out of range pools to zeros).
        output_size: S, bins per side.
        sampling_ratio: samples per bin side; 0 for adaptive ``ceil(bin size)`` (torchvision's <= 0).
        aligned: shift box coordinates by -0.5 pixel (detectron2's ``ROIAlignV2``); False clamps the
            box size to >= 1 feature pixel as the original RoIAlign.
        canonical_box_size: box side in input pixels that maps to ``canonical_level`` (224).
        canonical_level: FPN level of a ``canonical_box_size`` box (4).
        min_level: FPN level of ``features[0]`` (2 for P2).
        bin_major: return ``[K, S*S, C]`` (bins row-major, the dynamic conv's layout) instead of
            ``[K, C, S, S]``.

    Returns:
        Tensor[K, C, S, S] (or [K, S*S, C]) in the features' dtype, on their device; differentiable
        w.r.t. ``features``. The forward is deterministic; the backward too on CPU (see the module doc
        for CUDA).

    Raises:
        ValueError: an argument has a wrong shape, dtype, device or value (the message names it).
    """
    features = _check_inputs(
        features, boxes, batch_idx, output_size, sampling_ratio, canonical_box_size, min_level
    )
    backend = _backend_for(boxes.device.type)
    # Deterministic mode changes only the backward (_reference_backward): the forward has no atomics.
    if backend in ("reference", "published"):
        plain = roi_align_multilevel_published if backend == "published" else roi_align_multilevel_reference
        return plain(
            features,
            boxes,
            batch_idx,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
            min_level=min_level,
            bin_major=bin_major,
        )
    return torch.ops.diffdet.roi_align_multilevel(
        features,
        boxes,
        batch_idx,
        output_size,
        sampling_ratio,
        aligned,
        float(canonical_box_size),
        canonical_level,
        min_level,
        bin_major,
    )


@torch.compiler.assume_constant_result
def _backend_for(device_type: str) -> str:
    """The backend for this device type; a constant to torch.compile (read once, when tracing)."""
    return _backend.select(_OP, torch.device(device_type), _PREFERRED)


def _reference_backward_needed(device_type: str) -> bool:
    """Whether the backward of tensors on ``device_type`` must differentiate the reference: the CUDA
    backward adds with atomics, which deterministic mode forbids. The forward is never affected."""
    return device_type == "cuda" and torch.are_deterministic_algorithms_enabled()


def _reference_backward(
    grad: torch.Tensor,
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    shape: tuple[int, int],
    sizes: tuple[Sequence[int], Sequence[int]],
    options: Sequence,
    channels_last: bool,
) -> list[torch.Tensor]:
    """Gradient w.r.t. the maps by autograd through :func:`roi_align_multilevel_reference`.

    Same arguments and result as ``torch.ops.diffdet._roi_align_multilevel_backward`` (``shape`` = (B,
    C), ``sizes`` = (heights, widths), ``options`` = the op's arguments from ``output_size`` to
    ``bin_major``), deterministic on CUDA too. RoIAlign is linear in the maps, so its vector-Jacobian
    product taken at zero maps of the right shape is the gradient at any maps: nothing but shapes is saved.
    """
    output_size, sampling_ratio, aligned, cbs, clevel, min_level, bin_major = options
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    maps = [
        grad.new_zeros((*shape, h, w)).contiguous(memory_format=fmt).requires_grad_()
        for h, w in zip(*sizes, strict=True)
    ]
    with torch.enable_grad():
        out = roi_align_multilevel_reference(
            maps,
            boxes,
            batch_idx,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            canonical_box_size=cbs,
            canonical_level=clevel,
            min_level=min_level,
            bin_major=bin_major,
        )
        grads = torch.autograd.grad(out, maps, grad, allow_unused=True)
    # A level no box pools from (or an empty one) gets no gradient from autograd: zeros.
    return [
        torch.zeros_like(m) if g is None else g.contiguous(memory_format=fmt)
        for m, g in zip(maps, grads, strict=True)
    ]


def _check_inputs(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    output_size: int,
    sampling_ratio: int,
    canonical_box_size: float,
    min_level: int,
) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
        raise ValueError(
            f"features must be a sequence of [B, C, Hl, Wl] tensors, got {type(features).__name__}"
        )
    features = list(features)
    if not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError(f"features must hold 1 to {MAX_LEVELS} levels, got {len(features)}")
    _checks.check_shape("features[0]", features[0], (None, None, None, None))
    batch, channels = features[0].shape[:2]
    for i, fmap in enumerate(features):
        _checks.check_shape(f"features[{i}]", fmap, (batch, channels, None, None))
        _checks.check_floating(f"features[{i}]", fmap)
    _checks.check_same_dtype({f"features[{i}]": f for i, f in enumerate(features)})
    _checks.check_shape("boxes", boxes, (None, 4))
    _checks.check_dtype("boxes", boxes, (torch.float32, torch.float64))
    _checks.check_shape("batch_idx", batch_idx, (boxes.shape[0],))
    _checks.check_dtype("batch_idx", batch_idx, (torch.int64,))
    _checks.check_same_device(
        {"boxes": boxes, "batch_idx": batch_idx, **{f"features[{i}]": f for i, f in enumerate(features)}}
    )
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
    if not isinstance(sampling_ratio, int) or sampling_ratio < 0:
        raise ValueError(f"sampling_ratio must be an int >= 0 (0: adaptive), got {sampling_ratio!r}")
    if not (isinstance(canonical_box_size, (int, float)) and 0 < canonical_box_size < math.inf):
        raise ValueError(f"canonical_box_size must be a finite number > 0, got {canonical_box_size!r}")
    if not isinstance(min_level, int) or not 0 <= min_level <= 30:
        raise ValueError(f"min_level must be an int in [0, 30], got {min_level!r}")
    # Value checks only on CPU: on CUDA they would cost a host sync; the kernels are safe on any value.
    if boxes.device.type == "cpu" and boxes.numel() and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError("boxes must be finite, got NaN or inf coordinates")
        if bool(((batch_idx < 0) | (batch_idx >= batch)).any()):
            raise ValueError(f"batch_idx must be in [0, {batch}), got values outside")
    return features


def assign_levels_reference(
    boxes: torch.Tensor, num_levels: int, canonical_box_size: float, canonical_level: int, min_level: int
) -> torch.Tensor:
    """Level index (0 = ``features[0]``) per box by FPN Eqn. 1; -1 where undefined.

    Args:
        boxes (Tensor[K, 4]): xyxy input-image pixels.
        num_levels: L, the number of feature maps.
        canonical_box_size, canonical_level, min_level: as for :func:`roi_align_multilevel`.

    Returns:
        Tensor[K] int64 in [0, L) or -1 (negative area or NaN), computed in the boxes' dtype with
        detectron2's ``assign_boxes_to_levels`` operations.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [K]
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    level = level.clamp(min_level, min_level + num_levels - 1)
    return torch.where(torch.isnan(level), -1, level.nan_to_num() - min_level).to(torch.int64)


def roi_align_multilevel_published(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    min_level: int = 2,
    bin_major: bool = False,
) -> torch.Tensor:
    """The published code's pooling, for speed comparisons: detectron2's ``ROIPooler`` loop.

    Per level: the boxes of that level (a boolean mask and ``nonzero``, a host sync on CUDA),
    ``torchvision.ops.roi_align`` on them with the boxes cast to the features' dtype, and an index
    scatter into the output. Same arguments and result as :func:`roi_align_multilevel`, equal up to
    float rounding (torchvision sums the four taps of a sample before dividing by the sample count).
    Needs torchvision.
    """
    from torchvision.ops import roi_align

    num, channels, size = boxes.shape[0], features[0].shape[1], output_size
    levels = assign_levels_reference(boxes, len(features), canonical_box_size, canonical_level, min_level)
    rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)
    out = features[0].new_zeros((num, channels, size, size))
    for level, fmap in enumerate(features):
        inds = torch.nonzero(levels == level).squeeze(1)
        scale = 2.0 ** -(min_level + level)
        pooled = roi_align(fmap, rois[inds].to(fmap.dtype), size, scale, sampling_ratio, aligned)
        out.index_put_((inds,), pooled)
    return out.flatten(2).transpose(1, 2).contiguous() if bin_major else out


def _bilinear_gather(
    fmap: torch.Tensor, batch: torch.Tensor, y: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Bilinear samples of ``fmap`` [B, C, H, W] at the grid y [k, Ny] x x [k, Nx] -> [k, Ny, Nx, C].

    A sample outside [-1, H] x [-1, W] (or NaN) is 0; inside, coordinates clamp to [0, H-1] x [0, W-1].
    """
    height, width = fmap.shape[-2:]
    ok_y = (y >= -1) & (y <= height)  # [k, Ny]
    ok_x = (x >= -1) & (x <= width)  # [k, Nx]
    y = torch.where(ok_y, y, 0).clamp(0, height - 1)
    x = torch.where(ok_x, x, 0).clamp(0, width - 1)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0  # [k, Ny], [k, Nx]
    y0, x0 = y0.long(), x0.long()
    y1, x1 = (y0 + 1).clamp(max=height - 1), (x0 + 1).clamp(max=width - 1)
    b = batch[:, None, None]  # [k, 1, 1]

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return fmap[b, :, yi[:, :, None], xi[:, None, :]].to(ly.dtype)  # [k, Ny, Nx, C]

    wy0, wy1 = (1 - ly)[:, :, None, None], ly[:, :, None, None]
    wx0, wx1 = (1 - lx)[:, None, :, None], lx[:, None, :, None]
    value = wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1)) + wy1 * (wx0 * tap(y1, x0) + wx1 * tap(y1, x1))
    inside = (ok_y[:, :, None] & ok_x[:, None, :])[..., None]  # [k, Ny, Nx, 1]
    return torch.where(inside, value, 0)


def _pool_one_level(
    fmap: torch.Tensor,
    boxes: torch.Tensor,
    batch: torch.Tensor,
    scale: float,
    size: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoIAlign of k boxes (xyxy input pixels, compute dtype) on one map -> [k, S, S, C]."""
    box = boxes * scale - (0.5 if aligned else 0.0)  # [k, 4] feature pixels
    roi_w, roi_h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_w, bin_h = roi_w / size, roi_h / size  # [k]
    if sampling_ratio > 0:
        grid = torch.full((box.shape[0], 2), sampling_ratio, dtype=torch.int64, device=box.device)
    else:
        # ceil(bin size); a negative or NaN size gets no sample (the bin pools to 0, as in torchvision)
        sides = torch.stack([bin_h, bin_w], 1).ceil().nan_to_num(0, MAX_ADAPTIVE_GRID, 0)
        grid = sides.clamp(0, MAX_ADAPTIVE_GRID).long()  # [k, 2] (gh, gw)
    out = box.new_empty(box.shape[0], size, size, fmap.shape[1])
    for gh, gw in torch.unique(grid, dim=0).tolist():
        sel = torch.where((grid[:, 0] == gh) & (grid[:, 1] == gw))[0]
        # sample s of bin p lies at start + p * bin + (s + 0.5) * bin / g (torchvision's order of operations)
        pos_y = torch.arange(size, device=box.device).repeat_interleave(gh).to(box.dtype)  # [S*gh]
        off_y = (torch.arange(gh, device=box.device).repeat(size) + 0.5).to(box.dtype)
        pos_x = torch.arange(size, device=box.device).repeat_interleave(gw).to(box.dtype)
        off_x = (torch.arange(gw, device=box.device).repeat(size) + 0.5).to(box.dtype)
        y = box[sel, 1, None] + pos_y * bin_h[sel, None] + off_y * bin_h[sel, None] / gh  # [k', S*gh]
        x = box[sel, 0, None] + pos_x * bin_w[sel, None] + off_x * bin_w[sel, None] / gw  # [k', S*gw]
        samples = _bilinear_gather(fmap, batch[sel], y, x)  # [k', S*gh, S*gw, C]
        out[sel] = samples.unflatten(2, (size, gw)).unflatten(1, (size, gh)).sum((2, 4)) / max(gh * gw, 1)
    return out  # [k, S, S, C]


def roi_align_multilevel_reference(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    batch_idx: torch.Tensor,
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    min_level: int = 2,
    bin_major: bool = False,
) -> torch.Tensor:
    """Plain-PyTorch multi-level RoIAlign (gather-based, a loop over levels); same contract as
    :func:`roi_align_multilevel`, written apart from the kernels. Differentiable w.r.t. ``features``.
    """
    features = list(features)
    dtype = features[0].dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    size, channels, num = output_size, features[0].shape[1], boxes.shape[0]
    levels = assign_levels_reference(boxes, len(features), canonical_box_size, canonical_level, min_level)
    rounded = boxes.to(dtype).to(compute)  # detectron2's ROIAlign casts the rois to the features' dtype
    batch_ok = (batch_idx >= 0) & (batch_idx < features[0].shape[0])
    pooled = boxes.new_zeros((num, size, size, channels), dtype=compute)  # [K, S, S, C]
    for level, fmap in enumerate(features):
        sel = torch.where((levels == level) & batch_ok)[0]
        if sel.numel() and fmap.shape[2] and fmap.shape[3]:  # on an empty map every sample is outside: 0
            scale = 2.0 ** -(min_level + level)
            pooled = pooled.index_put(
                (sel,),
                _pool_one_level(fmap, rounded[sel], batch_idx[sel], scale, size, sampling_ratio, aligned),
            )
    if bin_major:
        return pooled.reshape(num, size * size, channels).to(dtype)  # [K, S*S, C]
    return pooled.permute(0, 3, 1, 2).contiguous().to(dtype)  # [K, C, S, S]


def _register() -> None:
    """Fake kernels and autograd of ``diffdet::roi_align_multilevel`` (torch.compile, torch.export)."""

    @torch.library.register_fake("diffdet::roi_align_multilevel")
    def _(
        features, boxes, batch_idx, output_size, sampling_ratio, aligned, cbs, clevel, min_level, bin_major
    ):
        _check_meta(features, boxes, batch_idx)
        num, channels = boxes.shape[0], features[0].shape[1]
        shape = (
            (num, output_size * output_size, channels)
            if bin_major
            else (num, channels, output_size, output_size)
        )
        return features[0].new_empty(shape)

    @torch.library.register_fake("diffdet::_roi_align_multilevel_backward")
    def _(
        grad,
        boxes,
        batch_idx,
        batch,
        channels,
        heights,
        widths,
        output_size,
        sampling_ratio,
        aligned,
        cbs,
        clevel,
        min_level,
        bin_major,
        channels_last,
    ):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return [
            grad.new_empty((batch, channels, h, w)).contiguous(memory_format=fmt)
            for h, w in zip(heights, widths, strict=True)
        ]

    def setup_context(ctx, inputs, output):
        features, boxes, batch_idx, *options = inputs
        ctx.save_for_backward(boxes, batch_idx)
        ctx.shape = (features[0].shape[0], features[0].shape[1])
        ctx.sizes = ([f.shape[2] for f in features], [f.shape[3] for f in features])
        ctx.options = options
        # The gradient takes the maps' layout, so autograd does not copy it into theirs.
        first = features[0]
        ctx.channels_last = (
            first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
        )

    def backward(ctx, grad):
        boxes, batch_idx = ctx.saved_tensors
        if _reference_backward_needed(grad.device.type):
            grads = _reference_backward(
                grad, boxes, batch_idx, ctx.shape, ctx.sizes, ctx.options, ctx.channels_last
            )
        else:
            grads = torch.ops.diffdet._roi_align_multilevel_backward(
                grad.contiguous(), boxes, batch_idx, *ctx.shape, *ctx.sizes, *ctx.options, ctx.channels_last
            )
        return list(grads), None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("diffdet::roi_align_multilevel", backward, setup_context=setup_context)


def _check_meta(features: list[torch.Tensor], boxes: torch.Tensor, batch_idx: torch.Tensor) -> None:
    if not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError(f"features must hold 1 to {MAX_LEVELS} levels, got {len(features)}")
    for i, fmap in enumerate(features):
        _checks.check_shape(f"features[{i}]", fmap, (features[0].shape[0], features[0].shape[1], None, None))
    _checks.check_shape("boxes", boxes, (None, 4))
    _checks.check_shape("batch_idx", batch_idx, (boxes.shape[0],))


if _extension.has_kernel(_OP, "cpu") or _extension.has_kernel(_OP, "cuda"):
    _register()
