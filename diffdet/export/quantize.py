"""int8 exported detectors: ONNX Runtime's dynamic quantization of the head's large matrix products,
and the accuracy check that must pass before such a file is kept.

Dynamic quantization stores a MatMul's or Gemm's constant weight in int8 (per output channel) and
quantizes its activations per call, so no calibration data is needed. Only products with a constant
weight of at least :data:`MIN_WEIGHTS` elements are quantized: in DiffusionDet those are the head's
(the dynamic layer's 256 -> 2 x 256 x 64 projection, the 12544 -> 256 output layer, the FFN and
attention projections, the class and box towers), which dominate the head's time at hundreds of
boxes. The backbone's convolutions and the dynamic convolution's products (both operands computed
per call) stay float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffdet.errors import InputError
from diffdet.optional import require

MIN_WEIGHTS = 1 << 16
"""Constant weights smaller than this (elements) stay float32: quantizing them saves no time."""
MAX_AP50_DROP = 0.01
"""An int8 file is kept only when its AP50 is within this of the fp32 file's on the check data."""


def large_products(model) -> list[str]:
    """Names of the MatMul / Gemm nodes of ``model`` (an onnx.ModelProto) with a constant weight of at
    least :data:`MIN_WEIGHTS` elements (a Gemm only in the plain ``A @ B(^T) + C`` form)."""
    sizes = {t.name: _elements(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if node.op_type == "Gemm" and not _plain_gemm(node):
            continue
        if sizes.get(node.input[1], 0) >= MIN_WEIGHTS:
            names.append(node.name)
    return names


def _plain_gemm(node) -> bool:
    """A Gemm with alpha = beta = 1 and A not transposed (what ``nn.Linear`` exports)."""
    attrs = {a.name: a for a in node.attribute}
    scales_one = all(attrs[k].f == 1.0 for k in ("alpha", "beta") if k in attrs)
    return scales_one and not ("transA" in attrs and attrs["transA"].i)


def gemms_as_matmuls(model, names: list[str]) -> list[str]:
    """Rewrite the named Gemm nodes of ``model`` in place as MatMul (+ Add of the bias), the form ONNX
    Runtime's dynamic quantization handles (it leaves Gemm in float32).

    Returns:
        The names of the MatMul nodes that now carry those products (the MatMuls named kept as they are).
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(names)
    nodes, out = [], []
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.name not in wanted:
            nodes.append(node)
            if node.name in wanted:
                out.append(node.name)
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        weight = numpy_helper.to_array(inits[node.input[1]])
        name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight.T.copy() if trans_b else weight, name))
        product = node.output[0] if len(node.input) < 3 or not node.input[2] else f"{node.name}_product"
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        out.append(f"{node.name}_matmul")
        if product != node.output[0]:
            nodes.append(
                helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return out


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= int(d)
    return count


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path``: ``onnx_path`` with its large matrix products dynamically quantized to int8.

    The ``"diffdet"`` metadata is copied, with ``"quantization": "int8-dynamic"`` added.

    Args:
        onnx_path: an exported fp32 ``.onnx`` detector.
        out_path: the int8 ``.onnx`` file to write.

    Returns:
        ``out_path``.

    Raises:
        InputError: ``onnx_path`` is not a readable exported detector, or has no product to quantize.
        diffdet.optional.MissingDependencyError: onnx or onnxruntime is not installed.
    """
    import json

    onnx = require("onnx", "onnx", "int8 quantization of an exported detector")
    quantization = require(
        "onnxruntime.quantization", "onnxruntime", "int8 quantization of an exported detector"
    )
    from diffdet.export.metadata import METADATA_KEY, read_metadata

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    metadata = read_metadata(onnx_path)
    if metadata.get("quantization"):
        raise InputError(f"{onnx_path}: already quantized ({metadata['quantization']})")
    model = onnx.load(str(onnx_path))
    nodes = large_products(model)
    if not nodes:
        raise InputError(
            f"{onnx_path}: no MatMul or Gemm with a constant weight of >= {MIN_WEIGHTS} elements"
        )
    nodes = gemms_as_matmuls(model, nodes)
    logging.disable(logging.WARNING)  # its advice to pre-process for static quantization does not apply
    try:
        quantization.quantize_dynamic(
            model, out_path, weight_type=quantization.QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
            extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    quantized = onnx.load(str(out_path))
    props = {p.key: p.value for p in quantized.metadata_props}
    props[METADATA_KEY] = json.dumps({**metadata, "quantization": "int8-dynamic"})
    onnx.helper.set_model_props(quantized, props)
    onnx.save(quantized, str(out_path))
    return out_path


def check_int8(fp32_ap50: float, int8_ap50: float, path: Path) -> None:
    """Refuse an int8 file whose AP50 is more than :data:`MAX_AP50_DROP` below the fp32 file's.

    Raises:
        InputError: the drop is too large (the message gives both figures and names the file).
    """
    if fp32_ap50 - int8_ap50 > MAX_AP50_DROP:
        raise InputError(
            f"{path}: int8 AP50 {int8_ap50:.3f} is {fp32_ap50 - int8_ap50:.3f} below fp32's {fp32_ap50:.3f} "
            f"(more than {MAX_AP50_DROP}); keep the fp32 file"
        )
