"""The Triton launchers run on their tensors' device, not the current one (Triton launches on the
current CUDA device and stream; the C++ ops have a CUDAGuard for this).

The effect needs two GPUs (tests marked ``gpu``, skipped with fewer): with ``cuda:0`` current, tensors on
``cuda:1`` must give the reference's results. On the CPU the launchers are checked to enter
``_device.on_device`` with their tensors' device around the launch, and the guard itself is checked.
"""

import contextlib

import pytest
import torch

triton = pytest.importorskip("triton")

from test_ddim_renewal_step import PAIRS, make_inputs, step_kwargs  # noqa: E402
from test_dynamic_conv import make_args  # noqa: E402

from diffdet.kernels import _device  # noqa: E402  (after the skip: needs triton)
from diffdet.ops import (  # noqa: E402
    ddim_renewal_step,
    ddim_renewal_step_reference,
    dynamic_conv,
    dynamic_conv_reference,
)

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def test_on_device_guards_cuda_devices_only():
    guard = _device.on_device(torch.device("cuda", 1))  # built without touching CUDA
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_device.on_device(torch.device("cpu")), contextlib.nullcontext)


@pytest.fixture
def entered(monkeypatch):
    """Devices passed to _device.on_device, and whether each launch happened inside it."""
    seen = []
    real = _device.on_device

    @contextlib.contextmanager
    def recording(device):
        seen.append(device)
        with real(device):
            yield

    monkeypatch.setattr(_device, "on_device", recording)
    return seen


def test_launchers_enter_the_tensors_device(device, triton_backend, entered):
    args = [a.to(device) for a in make_args(3, 3, 16, 8)]
    dynamic_conv(*args)
    inputs = tuple(x.to(device) for x in make_inputs([2], 5))
    ddim_renewal_step(*inputs, **step_kwargs(PAIRS[0]))
    assert [torch.device(d).type for d in entered] == [device, device]  # one launcher call each


@pytest.mark.gpu
@two_gpus
def test_dynamic_conv_runs_on_the_tensors_device(triton_backend):
    args = [a.to("cuda:1") for a in make_args(50, 7, 256, 64)]
    with torch.cuda.device(0):
        got = dynamic_conv(*args)
    assert got.device == torch.device("cuda:1")
    torch.testing.assert_close(got, dynamic_conv_reference(*args), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@two_gpus
def test_ddim_renewal_step_runs_on_the_tensors_device(triton_backend):
    inputs = tuple(x.to("cuda:1") for x in make_inputs([3, 9], 20))
    with torch.cuda.device(0):
        got = ddim_renewal_step(*inputs, **step_kwargs(PAIRS[1]))
    expected = ddim_renewal_step_reference(*inputs, **step_kwargs(PAIRS[1]))
    assert got[2].tolist() == expected[2].tolist()
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5)
