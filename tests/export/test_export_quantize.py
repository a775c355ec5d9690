"""int8 files (:mod:`diffdet.export.quantize`): which products are quantized, metadata, the AP50 check."""

from __future__ import annotations

import onnx
import pytest
import torch
from exportkit import write_stand_in_onnx
from torch import nn

from diffdet.errors import InputError
from diffdet.export.metadata import read_metadata
from diffdet.export.quantize import MAX_AP50_DROP, check_int8, large_products, quantize_int8
from diffdet.export.runtime import load_exported

METADATA = {
    "height": 8, "width": 8, "batch": 1, "num_boxes": 6, "steps": 1, "dtype": "fp32", "max_detections": 6,
    "renewal_threshold": 0.5, "nms_iou": 0.5, "ensemble": "all", "class_names": ["a"], "category_ids": [1],
    "format_version": 1, "format": "onnx", "score_threshold": None,
}  # fmt: skip


class TwoProducts(nn.Module):
    """A large product (a Gemm, 512 x 256 weight: quantized) and a small one (4 x 4: left in float32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.large = nn.Linear(256, 512)
        self.small = nn.Linear(4, 4)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, p = noise.shape[1], noise.shape[2]
        x = self.large(torch.cat([noise[0].reshape(n * p, 4)] * 64, dim=-1)).reshape(n, p, 512)  # a Gemm
        boxes = self.small(x[..., :4]).abs() * 4
        scores = torch.sigmoid(x[..., 4] + images.float().mean((1, 2, 3))[:, None] / 255)
        num = torch.full((images.shape[0],), noise.shape[2], dtype=torch.int64)
        return boxes, scores, torch.zeros_like(scores, dtype=torch.int64), num


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "fp32.onnx"
    inputs = (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 6, 4))
    return write_stand_in_onnx(TwoProducts(), inputs, path, METADATA)


def test_only_the_large_product_is_quantized_and_the_metadata_kept(fp32_file, tmp_path):
    fp32_model = onnx.load(str(fp32_file))
    assert [n.op_type for n in fp32_model.graph.node if n.name in large_products(fp32_model)] == ["Gemm"]
    out = quantize_int8(fp32_file, tmp_path / "int8.onnx")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 1 and "DynamicQuantizeLinear" in ops
    assert any(op in ("MatMul", "Gemm") for op in ops)  # the small product stays float32
    assert read_metadata(out) == {**METADATA, "quantization": "int8-dynamic"}
    with pytest.raises(InputError, match="already quantized"):
        quantize_int8(out, tmp_path / "again.onnx")
    image = [torch.zeros(3, 8, 8, dtype=torch.uint8)]
    fp32, int8 = (
        load_exported(fp32_file, threads=1)(image, seed=0),
        load_exported(out, threads=1)(image, seed=0),
    )
    torch.testing.assert_close(int8[0]["scores"], fp32[0]["scores"], atol=0.05, rtol=0)


def test_an_int8_file_losing_more_than_the_allowed_ap50_is_refused(tmp_path):
    check_int8(0.90, 0.90 - MAX_AP50_DROP / 2, tmp_path / "int8.onnx")
    with pytest.raises(InputError, match=r"int8\.onnx: int8 AP50 0\.850 is 0\.050 below fp32's 0\.900"):
        check_int8(0.90, 0.85, tmp_path / "int8.onnx")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "x.pt2", "--quantize", "int8"], "--quantize int8 writes an .onnx file from fp32"),
        (["--out", "x.onnx", "--quantize", "int8", "--dtype", "fp16"], "--quantize int8 writes an .onnx"),
        (["--out", "x.onnx", "--check-data", "val.json"], "--check-data checks a --quantize int8 file"),
    ],
)
def test_export_command_refuses_quantize_options_it_cannot_honour(options, message, capsys):
    from diffdet.cli import main

    assert main(["export", "--weights", "unused.pth", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
