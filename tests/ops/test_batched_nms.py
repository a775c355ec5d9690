"""batched_nms: the reference against hand-computed cases and torchvision, the kernels against
torchvision exactly (ties and degenerate boxes included), the padded variant, registration, checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffdet import _extension
from diffdet.ops.batched_nms import (
    TORCHVISION_VANILLA_MIN_BOXES,
    batched_nms,
    batched_nms_padded,
    batched_nms_reference,
)

torchvision = pytest.importorskip("torchvision", reason="torchvision is the outside baseline")

HAS_CUDA = torch.cuda.is_available()
needs_cpu_kernel = pytest.mark.skipif(not _extension.has_kernel("batched_nms", "cpu"), reason="no CPU kernel")
needs_cuda_kernel = pytest.mark.skipif(
    not (HAS_CUDA and _extension.has_kernel("batched_nms_padded", "cuda")), reason="needs CUDA and its kernel"
)


def make_inputs(num, classes=5, ties=True, dtype=torch.float32, seed=0):
    """Non-negative xyxy boxes (torchvision's coordinate trick needs them), clustered so that many
    overlap; scores quantised to 20 levels when ``ties`` (many equal scores); some degenerate boxes."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(num, 2, generator=gen) * 200 + 50
    size = torch.rand(num, 2, generator=gen) * 60 + 1
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    if num > 4:
        boxes[1] = boxes[1, [2, 3, 0, 1]]  # flipped (x2 < x1, y2 < y1)
        boxes[3, 2] = boxes[3, 0]  # zero width
        boxes[4] = boxes[0]  # duplicate of box 0
    scores = torch.rand(num, generator=gen)
    if ties:
        scores = (scores * 20).floor() / 20
    idxs = torch.randint(0, classes, (num,), generator=gen)
    return boxes.to(dtype), scores.to(dtype), idxs


def test_reference_hand_computed():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # kept (best of class 0)
            [1.0, 0.0, 11.0, 10.0],  # IoU 9/11 > 0.5 with box 0: suppressed
            [0.0, 0.0, 10.0, 10.0],  # same box, class 1: kept
            [5.0, 0.0, 15.0, 10.0],  # IoU 5/15 with box 0: kept
            [0.0, 0.0, 10.0, 10.0],  # equal score to box 0, higher index: suppressed by it
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.9])
    idxs = torch.tensor([0, 0, 1, 0, 0])
    assert batched_nms_reference(boxes, scores, idxs, 0.5).tolist() == [0, 2, 3]
    # IoU exactly at the threshold does not suppress (IoU > threshold suppresses)
    half = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])  # IoU 2/4
    assert batched_nms_reference(
        half, torch.tensor([1.0, 0.5]), torch.zeros(2, dtype=torch.int64), 0.5
    ).tolist() == [0, 1]


@pytest.mark.parametrize("num", [1, 60, TORCHVISION_VANILLA_MIN_BOXES + 200])
def test_reference_matches_torchvision(num):
    boxes, scores, idxs = make_inputs(num)
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms_reference(boxes, scores, idxs, 0.5), expected)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "num", [0, 1, 2, 97, TORCHVISION_VANILLA_MIN_BOXES, TORCHVISION_VANILLA_MIN_BOXES + 1, 4000]
)
@pytest.mark.parametrize("classes", [1, 80])
def test_batched_nms_matches_torchvision(dtype, num, classes):
    boxes, scores, idxs = make_inputs(num, classes=classes, dtype=dtype)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


@needs_cpu_kernel
def test_batched_nms_parallel_classes_match_torchvision():
    """Enough pairs per class (2 x 3000^2 / 2) that the classes run on several threads."""
    boxes, scores, idxs = make_inputs(6000, classes=2)
    assert torch.equal(
        batched_nms(boxes, scores, idxs, 0.5), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    )


@needs_cpu_kernel
@settings(max_examples=40, deadline=None)
@given(
    num=st.integers(0, 60),
    classes=st.integers(1, 4),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_nms_random_matches_torchvision_and_reference(num, classes, threshold, ties, seed):
    boxes, scores, idxs = make_inputs(num, classes=classes, ties=ties, seed=seed)
    keep = batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, threshold))
    assert torch.equal(keep, batched_nms_reference(boxes, scores, idxs, threshold))


@pytest.mark.parametrize("padded", [False, True])
def test_published_backend_runs_torchvision(monkeypatch, padded):
    boxes, scores, idxs = make_inputs(200)
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    monkeypatch.setenv("DIFFDET_BACKEND", "published")
    if padded:
        keep, count = batched_nms_padded(boxes, scores, idxs, 0.5)
        assert torch.equal(keep[: int(count)], expected) and (keep[int(count) :] == -1).all()
    else:
        assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)


@needs_cpu_kernel
@pytest.mark.parametrize("num", [0, 7, 300])
def test_batched_nms_padded_equals_batched_nms(num):
    boxes, scores, idxs = make_inputs(num)
    keep, count = batched_nms_padded(boxes, scores, idxs, 0.5)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.shape == (num,) and count.dim() == 0 and count.dtype == torch.int64
    assert torch.equal(keep[: int(count)], expected)
    assert (keep[int(count) :] == -1).all()


@needs_cpu_kernel
def test_batched_nms_opcheck():
    boxes, scores, idxs = make_inputs(50)
    for op in (torch.ops.diffdet.batched_nms.default, torch.ops.diffdet.batched_nms_padded.default):
        torch.library.opcheck(op, (boxes, scores, idxs, 0.5), test_utils=("test_schema", "test_faketensor"))


@needs_cpu_kernel
def test_batched_nms_torch_compile_fullgraph():
    boxes, scores, idxs = make_inputs(80)
    padded = torch.compile(batched_nms_padded, fullgraph=True, backend="eager")
    exact = torch.compile(batched_nms, fullgraph=True, backend="eager")
    keep, count = padded(boxes, scores, idxs, 0.5)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep[: int(count)], expected)
    assert torch.equal(exact(boxes, scores, idxs, 0.5), expected)


@needs_cpu_kernel
def test_batched_nms_padded_torch_export():
    class Nms(torch.nn.Module):
        def forward(self, boxes, scores, idxs):
            return batched_nms_padded(boxes, scores, idxs, 0.5)

    boxes, scores, idxs = make_inputs(40)
    program = torch.export.export(Nms(), (boxes, scores, idxs))
    keep, count = program.module()(boxes, scores, idxs)
    assert torch.equal(keep[: int(count)], batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda b, s, i: (b[:, :3], s, i), "boxes"),
        (lambda b, s, i: (b.half(), s, i), "boxes"),
        (lambda b, s, i: (b, s[:-1], i), "scores"),
        (lambda b, s, i: (b, s.long(), i), "scores"),
        (lambda b, s, i: (b, s, i[:-1]), "idxs"),
        (lambda b, s, i: (b, s, i.int()), "idxs"),
        (lambda b, s, i: (b.index_fill(0, torch.tensor([2]), float("inf")), s, i), "boxes"),
    ],
)
def test_batched_nms_rejects_bad_input(change, name):
    boxes, scores, idxs = make_inputs(6)
    with pytest.raises(ValueError, match=name):
        batched_nms(*change(boxes, scores, idxs), 0.5)
    with pytest.raises(ValueError, match=name):
        batched_nms_padded(*change(boxes, scores, idxs), 0.5)


def test_batched_nms_rejects_bad_threshold():
    with pytest.raises(ValueError, match="iou_threshold"):
        batched_nms(*make_inputs(3), float("nan"))


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize("num", [0, 1, 63, 64, 65, 1000, 4000, 20000])
@pytest.mark.parametrize("classes", [1, 80])
def test_batched_nms_cuda_matches_cpu(num, classes):
    """With distinct scores (no ties) the CUDA keep list equals the CPU one exactly; 20000 boxes (the
    ensembled candidates of 4 steps x 5000 boxes) make 313 mask words per row, one class run of 20000."""
    boxes, scores, idxs = make_inputs(num, classes=classes, ties=False)
    keep = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(keep.cpu(), batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.gpu
@needs_cuda_kernel
def test_batched_nms_cuda_ties_keep_the_stable_order():
    boxes, scores, idxs = make_inputs(500, classes=3, ties=True)
    keep, count = batched_nms_padded(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    kept = keep[: int(count)].cpu()
    assert torch.equal(torch.sort(kept).values, torch.sort(batched_nms(boxes, scores, idxs, 0.5)).values)
    assert (keep[int(count) :] == -1).all()


@pytest.mark.gpu
@needs_cuda_kernel
def test_batched_nms_padded_cuda_graph_capture():
    boxes, scores, idxs = (t.cuda() for t in make_inputs(700, classes=80, ties=False))
    batched_nms_padded(boxes, scores, idxs, 0.5)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        keep, count = batched_nms_padded(boxes, scores, idxs, 0.5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(keep[: int(count)].cpu(), batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))
