"""bf16 on a CPU without bf16 arithmetic: the ISA probe, the one-time warning (library and CLI), and the
``cpu`` line of ``diffdet info``. The CPU's flags are faked by replacing the /proc/cpuinfo reader."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import pytest
import torch
from PIL import Image

from diffdet import hardware
from diffdet.checkpoint import load, save_checkpoint
from diffdet.cli import main
from diffdet.info import collect, format_info
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

AVX2 = "fpu sse2 avx avx2 fma"
AMX = "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"

TINY = dict(
    backbone="R18", num_classes=3, hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=5, min_size_test=32, max_size_test=48,
)  # fmt: skip


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(flags)`` makes /proc/cpuinfo report ``flags`` (None: no /proc/cpuinfo) and re-arms the
    once-per-process warning."""

    def fake(flags: str | None) -> None:
        fields = {"flags": flags, "model name": "Test CPU" if flags is not None else None}
        monkeypatch.setattr(hardware, "_cpuinfo_field", fields.get)
        monkeypatch.setattr(hardware, "_warned", False)

    return fake


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", build_detector(cfg), cfg)


@pytest.mark.parametrize(
    ("flags", "isa", "native"),
    [
        (AMX, "AMX", True),
        ("fpu avx2 avx512f avx512_bf16", "AVX512-BF16", True),
        ("fpu avx2 avx512f avx512bw avx512_vnni", "AVX512", False),
        (AVX2, "AVX2", False),
    ],
)
def test_cpu_isa_names_the_widest_matrix_isa_and_whether_bf16_is_native(cpu, flags, isa, native):
    cpu(flags)
    assert hardware.cpu_isa() == isa
    assert hardware.cpu_has_native_bf16() is native


def test_without_cpuinfo_the_isa_is_torchs(cpu):
    cpu(None)
    assert hardware.cpu_flags() is None
    assert hardware.cpu_isa() == torch.backends.cpu.get_cpu_capability()
    assert isinstance(hardware.cpu_has_native_bf16(), bool)


def test_emulated_bf16_warns_once_in_one_line(cpu):
    cpu(AVX2)
    with pytest.warns(RuntimeWarning, match="emulated") as caught:
        assert hardware.warn_if_bf16_is_emulated("cpu", torch.bfloat16)
    (warning,) = caught
    message = str(warning.message)
    assert "\n" not in message and "AVX2" in message and "fp32" in message
    low, high = hardware.EMULATED_BF16_SLOWDOWN
    assert f"{low:g}-{high:g}x slower" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not hardware.warn_if_bf16_is_emulated("cpu", torch.bfloat16)


@pytest.mark.parametrize(
    ("flags", "device", "dtype"),
    [
        (AMX, "cpu", torch.bfloat16),
        (AVX2, "cpu", torch.float32),
        (AVX2, "cpu", None),
        (AVX2, "cuda", torch.bfloat16),
    ],
)
def test_no_warning_when_bf16_is_native_or_not_asked_for_on_a_cpu(cpu, flags, device, dtype):
    cpu(flags)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not hardware.warn_if_bf16_is_emulated(device, dtype)


def test_load_in_bf16_on_an_avx2_cpu_warns_and_runs_bf16(cpu, weights):
    cpu(AVX2)
    with pytest.warns(RuntimeWarning, match="emulated"):
        model = load(weights, dtype=torch.bfloat16)
    assert model.head.time_mlp[1].weight.dtype == torch.bfloat16
    cpu(AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(weights, dtype=torch.bfloat16)


def test_cli_dtype_bf16_prints_one_warning_line(cpu, weights, tmp_path):
    cpu(AVX2)
    image = tmp_path / "a.png"
    Image.new("RGB", (48, 32), (90, 140, 200)).save(image)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(
            ["detect", str(image), "--weights", str(weights), "--dtype", "bf16", "--device", "cpu",
             "--out", str(tmp_path / "out"), "--no-progress"]
        )  # fmt: skip
    assert status == 0
    lines = [line for line in err.getvalue().splitlines() if "bf16" in line]
    assert len(lines) == 1 and lines[0].startswith("diffdet: warning: bf16 on this CPU (AVX2")


@pytest.mark.parametrize(("flags", "native"), [(AVX2, "no"), (AMX, "yes")])
def test_info_shows_the_cpu_its_isa_and_native_bf16(cpu, flags, native):
    cpu(flags)
    info = collect()
    assert info["cpu"]["model"] == "Test CPU" and info["cpu"]["native_bf16"] is (native == "yes")
    assert info["cpu"]["flags"] == [f for f in hardware.REPORTED_FLAGS if f in flags.split()]
    assert json.loads(json.dumps(info))["cpu"] == info["cpu"]
    (line,) = [line for line in format_info(info).splitlines() if line.startswith("cpu ")]
    assert "Test CPU" in line and hardware.cpu_isa() in line and f"native bf16: {native}" in line
