"""The Triton-interpreter fix of ``diffdet.kernels._interpreter`` (Triton <= 3.6 with NumPy >= 2.4)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from diffdet.kernels import _interpreter  # noqa: E402  (after the skip: needs triton)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # set by conftest.py without CUDA


def _buggy(tensor, scope):  # the shape of Triton 3.6's _patch_lang_tensor
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))


def _fixed(tensor, scope):  # the shape of Triton 3.8's
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))


def test_needs_fix_recognises_the_buggy_interpreter_only():
    assert _interpreter.needs_fix(_buggy)
    assert not _interpreter.needs_fix(_fixed)
    assert not _interpreter.needs_fix(print)  # no Python source: leave it alone


@triton.jit
def _count_kernel(out_ptr, N, STEP: tl.constexpr):
    total = tl.zeros((), dtype=tl.int32)
    for _ in range(0, N, STEP):  # a runtime loop bound: the interpreter calls N.__index__()
        total += 1
    tl.store(out_ptr, total)


@pytest.mark.skipif(not INTERPRET, reason="checks the CPU interpreter")
@pytest.mark.parametrize("n", [1, 7, 40])
def test_runtime_loop_bound_runs_in_the_interpreter(n):
    """Failed with TypeError at the launch under Triton 3.6 + NumPy 2.4 before the fix."""
    out = torch.zeros(1, dtype=torch.int32)
    _count_kernel[(1,)](out, n, STEP=2)
    assert out.item() == -(-n // 2)
