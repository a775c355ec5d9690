"""Image batching for the detector: validate, resize (test-time shortest edge), normalise, pad.

Mirrors the reference's test path: detectron2's ``ResizeShortestEdge(800, 1333)`` (PIL bilinear on
uint8), normalisation with RGB mean/std on the 0-255 scale, and ``ImageList.from_tensors`` (zero
padding after normalisation, bottom/right, to a multiple of ``size_divisibility``). Resizing uses
``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``, which follows PIL's filter; uint8
images are resized in uint8 on the CPU (rounded as PIL rounds) and rounded back to integers elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ImageBatch(NamedTuple):
    """A padded, normalised batch and the sizes needed to map boxes back.

    Attributes:
        tensor (Tensor[B, 3, Hp, Wp]): normalised images, zero-padded to multiples of the divisibility.
        image_sizes: (h, w) of each image after resizing, before padding.
        original_sizes: (h, w) of each image as given.
        image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, float32.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    image_whwh: Tensor


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) of detectron2's ``ResizeShortestEdge.get_output_shape``.

    The shorter side becomes ``short_edge`` unless the longer one would exceed ``max_size``, in which
    case the longer side becomes ``max_size``; sizes round as ``int(x + 0.5)``.
    """
    scale = short_edge / min(h, w)
    newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def as_image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Accept a [B, 3, H, W] tensor or a sequence of [3, H, W] tensors; check rank, channels, dtype.

    Raises:
        ValueError: not a tensor or sequence of tensors, wrong rank or channel count, or a dtype other
            than uint8 or floating.
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [B, 3, H, W] or a list of [3, H, W], got {tuple(images.shape)}")
        images = list(images.unbind(0))
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"images[{i}] must be a torch.Tensor, got {type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{i}] must be [3, H, W] RGB, got {tuple(image.shape)}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"images[{i}] must have H, W >= 1, got {tuple(image.shape)}")
        if image.dtype != torch.uint8 and not image.dtype.is_floating_point:
            raise ValueError(f"images[{i}] must be uint8 or floating, got {image.dtype}")
    return list(images)


def _check_float_range(images: list[Tensor]) -> None:
    """Float images must lie in [0, 1] (torchvision's convention); one host sync for the batch."""
    floats = [(i, im) for i, im in enumerate(images) if im.dtype.is_floating_point]
    if not floats:
        return
    bounds = torch.stack([torch.stack(torch.aminmax(im.float())) for _, im in floats]).cpu().tolist()
    for (i, _), (lo, hi) in zip(floats, bounds, strict=True):
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"images[{i}] is floating with values in [{lo:.4g}, {hi:.4g}]; float images must be in "
                "[0, 1] (pass uint8 for 0-255 images)"
            )


def _to_pixels(image: Tensor, size: tuple[int, int] | None) -> Tensor:
    """[3, H, W] uint8 or [0, 1] float -> float32 on the 0-255 scale, resized to ``size`` if given."""
    if size is None or size == tuple(image.shape[1:]):
        return image.float() if image.dtype == torch.uint8 else image.float() * 255.0
    if image.dtype == torch.uint8:
        if image.device.type == "cpu":
            out = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)
            return out[0].float()
        out = F.interpolate(
            image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        return out[0].round().clamp(0, 255)
    out = F.interpolate(
        image[None].float() * 255.0, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0]


def preprocess_images(
    images: Sequence[Tensor],
    *,
    pixel_mean: Tensor,
    pixel_std: Tensor,
    size_divisibility: int,
    resize_to: tuple[int, int] | None,
    dtype: torch.dtype,
) -> ImageBatch:
    """Resize, normalise and pad a list of validated images (see :func:`as_image_list`).

    Args:
        images: [3, H, W] RGB images, uint8 (0-255) or float in [0, 1], on the model's device.
        pixel_mean (Tensor[3, 1, 1]): RGB mean, 0-255 scale, float32.
        pixel_std (Tensor[3, 1, 1]): RGB std, 0-255 scale, float32.
        size_divisibility: padded H and W are multiples of this.
        resize_to: (short_edge, max_size) of the shortest-edge resize, or None to keep the sizes.
        dtype: dtype of the returned batch (the backbone's).

    Returns:
        ImageBatch.

    Raises:
        ValueError: a float image has values outside [0, 1].
    """
    _check_float_range(images)
    original = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    sizes = [resized_shape(h, w, *resize_to) if resize_to else (h, w) for h, w in original]
    normalised = [
        (_to_pixels(im, size) - pixel_mean) / pixel_std for im, size in zip(images, sizes, strict=True)
    ]
    d = size_divisibility
    max_h = -(-max(h for h, _ in sizes) // d) * d
    max_w = -(-max(w for _, w in sizes) // d) * d
    device = pixel_mean.device
    batch = torch.zeros((len(images), 3, max_h, max_w), dtype=dtype, device=device)
    for out, im, (h, w) in zip(batch, normalised, sizes, strict=True):
        out[:, :h, :w] = im
    whwh = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32, device=device)
    return ImageBatch(batch, sizes, original, whwh)


def postprocess_boxes(
    boxes: Tensor, resized: tuple[int, int], original: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """detectron2's ``detector_postprocess``: scale boxes to the original image, clip, find non-empty.

    Args:
        boxes (Tensor[n, 4]): xyxy pixels of the resized image, float32.
        resized: (h, w) of the resized image.
        original: (h, w) of the original image.

    Returns:
        (boxes [n, 4] xyxy original-image pixels clipped to the image, keep [n] bool: w > 0 and h > 0).
    """
    scale_x, scale_y = original[1] / resized[1], original[0] / resized[0]
    h, w = original
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1, x2 = (x1 * scale_x).clamp(min=0, max=w), (x2 * scale_x).clamp(min=0, max=w)
    y1, y2 = (y1 * scale_y).clamp(min=0, max=h), (y2 * scale_y).clamp(min=0, max=h)
    out = torch.stack((x1, y1, x2, y2), dim=-1)
    return out, (x2 - x1 > 0) & (y2 - y1 > 0)
