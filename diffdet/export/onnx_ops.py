"""Standard-ONNX translations of the diffdet custom ops that an exported graph holds.

``torch.onnx.export(..., dynamo=True, custom_translation_table=TRANSLATIONS)`` writes each op with
operators of the default domain only, so any ONNX runtime runs the file:

- ``diffdet::roi_align_multilevel``: FPN level per box by Eqn. 1 (element-wise ops), one ``RoiAlign``
  per level over every box, and ``Where`` keeping each box's own level (a box with no level, NaN or
  negative area, pools to zeros as in the op). ``aligned=True`` is ``coordinate_transformation_mode
  = "half_pixel"``.
- ``diffdet::batched_nms_padded``: ``NonMaxSuppression`` with one score row per class (a box scores
  -inf outside its class, below the score threshold), which is class-aware NMS without offsetting
  coordinates (offsets cost float32 precision at large labels); the kept boxes sorted by score
  (``TopK``) and padded with -1 to the fixed size.

The third op of the sampler, ``ddim_renewal_step``, and ``dynamic_conv`` run as plain PyTorch on the
CPU (element-wise ops and MatMuls), which the exporter translates itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from onnxscript import ir
from onnxscript.function_libs.torch_lib.tensor_typing import TFloat
from onnxscript.onnx_opset import opset18 as op
from onnxscript.onnx_types import INT64

_FLOAT_LOWEST = float(torch.finfo(torch.float32).min)


def roi_align_multilevel(
    features: Sequence[TFloat],
    boxes: TFloat,
    batch_idx: INT64,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_box_size: float,
    canonical_level: int,
    min_level: int,
    bin_major: bool,
) -> TFloat:
    """``diffdet::roi_align_multilevel`` as per-level ``RoiAlign`` + ``Where`` (see the module doc)."""
    x1 = op.Gather(boxes, op.Constant(value_int=0), axis=1)
    y1 = op.Gather(boxes, op.Constant(value_int=1), axis=1)
    x2 = op.Gather(boxes, op.Constant(value_int=2), axis=1)
    y2 = op.Gather(boxes, op.Constant(value_int=3), axis=1)
    area = op.Mul(op.Sub(x2, x1), op.Sub(y2, y1))  # [K], in the boxes' dtype as the op

    def const(value: float) -> ir.Value:
        return op.Constant(value=ir.tensor(value, dtype=boxes.dtype))

    ratio = op.Add(op.Div(op.Sqrt(area), const(canonical_box_size)), const(1e-8))
    level = op.Floor(op.Add(const(canonical_level), op.Div(op.Log(ratio), const(math.log(2.0)))))
    level = op.Clip(level, const(min_level), const(min_level + len(features) - 1))
    # As the op (and detectron2's ROIAlign): sample at the boxes rounded to the features' dtype.
    rois = op.Cast(op.Cast(boxes, to=features[0].dtype), to=ir.DataType.FLOAT)
    out = None
    for index, fmap in enumerate(features):
        pooled = op.RoiAlign(
            op.Cast(fmap, to=ir.DataType.FLOAT),
            rois,
            batch_idx,
            mode="avg",
            output_height=output_size,
            output_width=output_size,
            sampling_ratio=sampling_ratio,
            spatial_scale=2.0 ** -(min_level + index),
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        )  # [K, C, S, S] float32
        here = op.Unsqueeze(op.Equal(level, const(min_level + index)), [1, 2, 3])
        out = op.Where(here, pooled, op.Constant(value_float=0.0) if out is None else out)
    out = op.Cast(out, to=features[0].dtype)
    if bin_major:
        out = op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, -1])), perm=[0, 2, 1])
    return out


def batched_nms_padded(
    boxes: TFloat, scores: TFloat, idxs: INT64, iou_threshold: float
) -> tuple[INT64, INT64]:
    """``diffdet::batched_nms_padded`` as ``NonMaxSuppression`` over per-class score rows."""
    num = op.Shape(scores)  # [1]: K
    classes = op.Range(
        op.Constant(value_int=0), op.Add(op.ReduceMax(idxs, keepdims=0), op.Constant(value_int=1)), 1
    )  # [C]
    member = op.Equal(op.Unsqueeze(classes, [1]), op.Unsqueeze(idxs, [0]))  # [C, K]
    fscores = op.Cast(scores, to=ir.DataType.FLOAT)
    rows = op.Where(member, op.Unsqueeze(fscores, [0]), op.Constant(value_float=-math.inf))
    selected = op.NonMaxSuppression(
        op.Unsqueeze(op.Cast(boxes, to=ir.DataType.FLOAT), [0]),
        op.Unsqueeze(rows, [0]),
        num,
        op.Constant(value_floats=[float(iou_threshold)]),
        op.Constant(value_floats=[_FLOAT_LOWEST]),
        center_point_box=0,
    )  # [n, 3]: (batch, class, box)
    kept = op.Reshape(op.Gather(selected, op.Constant(value_ints=[2]), axis=1), [-1])  # [n]
    count = op.Shape(kept)  # [1]: n
    _, order = op.TopK(op.Gather(fscores, kept), count, largest=1, sorted=1)
    kept = op.Gather(kept, order)  # by decreasing score
    padding = op.Expand(op.Constant(value_int=-1), op.Sub(num, count))
    return op.Concat(kept, padding, axis=0), op.Squeeze(count)


def translations() -> dict:
    """The ``custom_translation_table`` of ``torch.onnx.export`` for graphs of :mod:`graph`."""
    return {
        torch.ops.diffdet.roi_align_multilevel.default: roi_align_multilevel,
        torch.ops.diffdet.batched_nms_padded.default: batched_nms_padded,
    }
