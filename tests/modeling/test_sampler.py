"""The DDIM sampler against an independent transcription of the published ``ddim_sample``.

A mock head (a fixed elementwise function of the boxes and t, in float32 as the real head) stands in
for the network, so the comparison isolates the sampler: time pairs, box mapping, renewal, DDIM update
with the published float64 promotion, the random draws (order, shapes, dtypes), ensemble, top-k and NMS.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms

from diffdet.modeling.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from diffdet.modeling.diffusion import schedule_buffers
from diffdet.modeling.sampler import (
    Candidates,
    DDIMSampler,
    diffusion_to_boxes,
    draw_noise,
    nms_per_image,
    topk_candidates,
)

K = 3
STAGES = 2
BUFFERS = schedule_buffers(1000)


pytestmark = pytest.mark.usefixtures("one_thread")


class MockHead:
    """(boxes [B, P, 4], t [B]) -> (logits [2, B, P, K], boxes [2, B, P, 4]) float32; records its inputs."""

    def __init__(self, whwh: torch.Tensor, bias: float = 0.0) -> None:
        self.whwh, self.bias, self.inputs = whwh, bias, []

    def __call__(self, boxes, t):
        self.inputs.append(boxes.clone())
        b = boxes.float()
        cx = (b[..., 0] + b[..., 2]) / (2 * self.whwh[:, None, 0])
        cy = (b[..., 1] + b[..., 3]) / (2 * self.whwh[:, None, 1])
        k = torch.arange(K, dtype=torch.float32)
        logits = (
            4 * torch.sin(13 * cx[..., None] + 7 * cy[..., None] + k + 1e-3 * t[:, None, None]) + self.bias
        )
        pred = b * 0.9 + torch.tensor([1.0, 2.0, 6.0, 5.0])
        return torch.stack([logits, logits * 0.5]), torch.stack([pred + 1, pred])


def _published_inference(box_cls, box_pred, num_proposals):
    """Published ``inference`` (focal branch) for one image, before NMS."""
    scores = torch.sigmoid(box_cls)
    labels = torch.arange(K).unsqueeze(0).repeat(num_proposals, 1).flatten(0, 1)
    scores_per_image, topk_indices = scores[0].flatten(0, 1).topk(num_proposals, sorted=False)
    box = box_pred[0].view(-1, 1, 4).repeat(1, K, 1).view(-1, 4)[topk_indices]
    return box, scores_per_image, labels[topk_indices]


def _published_ddim_sample(head, images_whwh, num_proposals, steps):
    """Published ``ddim_sample`` + ``model_predictions`` (batch 1, CPU), statement by statement."""
    scale, eta = 2.0, 1.0
    batch = images_whwh.shape[0]
    times = torch.linspace(-1, 999, steps=steps + 1)
    times = list(reversed(times.int().tolist()))
    time_pairs = list(zip(times[:-1], times[1:]))  # noqa: B905, RUF007 (as published)
    img = torch.randn((batch, num_proposals, 4))
    ensemble_score, ensemble_label, ensemble_coord = [], [], []
    for time, time_next in time_pairs:
        t = torch.full((batch,), time, dtype=torch.long)
        x_boxes = torch.clamp(img, min=-1 * scale, max=scale)
        x_boxes = ((x_boxes / scale) + 1) / 2
        x_boxes = box_cxcywh_to_xyxy(x_boxes)
        x_boxes = x_boxes * images_whwh[:, None, :]
        outputs_class, outputs_coord = head(x_boxes, t)
        x_start = outputs_coord[-1] / images_whwh[:, None, :]
        x_start = box_xyxy_to_cxcywh(x_start)
        x_start = (x_start * 2 - 1.0) * scale
        x_start = torch.clamp(x_start, min=-1 * scale, max=scale)
        recip = BUFFERS["sqrt_recip_alphas_cumprod"].gather(-1, t).reshape(batch, 1, 1)
        recipm1 = BUFFERS["sqrt_recipm1_alphas_cumprod"].gather(-1, t).reshape(batch, 1, 1)
        pred_noise = (recip * img - x_start) / recipm1

        score_per_image = torch.sigmoid(outputs_class[-1][0])
        value, _ = torch.max(score_per_image, -1, keepdim=False)
        keep_idx = value > 0.5
        num_remain = torch.sum(keep_idx)
        pred_noise = pred_noise[:, keep_idx, :]
        x_start = x_start[:, keep_idx, :]
        img = img[:, keep_idx, :]
        if time_next < 0:
            img = x_start
            continue
        alpha = BUFFERS["alphas_cumprod"][time]
        alpha_next = BUFFERS["alphas_cumprod"][time_next]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma**2).sqrt()
        noise = torch.randn_like(img)
        img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
        img = torch.cat((img, torch.randn(1, num_proposals - num_remain, 4)), dim=1)
        if steps > 1:
            box, score, label = _published_inference(outputs_class[-1], outputs_coord[-1], num_proposals)
            ensemble_score.append(score)
            ensemble_label.append(label)
            ensemble_coord.append(box)
    if steps > 1:
        box, score, label = torch.cat(ensemble_coord), torch.cat(ensemble_score), torch.cat(ensemble_label)
    else:
        box, score, label = _published_inference(outputs_class[-1], outputs_coord[-1], num_proposals)
    keep = tv_batched_nms(box, score, label, 0.5)
    return box[keep], score[keep], label[keep]


WHWH = torch.tensor([[96.0, 64.0, 96.0, 64.0]])


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 3])
def test_reference_sampler_reproduces_published_ddim_sample(steps, seed):
    published_head, head = MockHead(WHWH), MockHead(WHWH)
    torch.manual_seed(seed)
    expect = _published_ddim_sample(published_head, WHWH, 40, steps)
    next_published = torch.randn(3)
    torch.manual_seed(seed)
    sampler = DDIMSampler(BUFFERS["alphas_cumprod"], 2.0)
    candidates = sampler.sample_reference(head, WHWH, num_boxes=40, steps=steps, renewal_threshold=0.5)
    assert torch.equal(torch.randn(3), next_published), "the RNG stream was consumed differently"
    (got,) = nms_per_image(candidates, num_classes=K, iou_threshold=0.5, max_detections=None)
    # Head inputs at every step: same values and dtype (float64 after the first DDIM update).
    assert len(head.inputs) == steps
    for i, (a, b) in enumerate(zip(head.inputs, published_head.inputs, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"head input at step {i}"
    for name, a, b in zip(("boxes", "scores", "labels"), got, expect, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("steps", [2, 4])
def test_renewal_keeps_some_boxes_in_the_parity_setting(steps):
    # Guard that the parity test above exercises partial renewal (not all-kept or all-renewed).
    head = MockHead(WHWH)
    torch.manual_seed(0)
    records = []
    DDIMSampler(BUFFERS["alphas_cumprod"], 2.0).sample_reference(
        head, WHWH, num_boxes=40, steps=steps, renewal_threshold=0.5, intermediates=records
    )
    kept = [int(r["num_kept"][0]) for r in records if r["num_kept"] is not None]
    assert all(0 < k < 40 for k in kept), kept
    assert records[1]["img"].dtype == torch.float64


def test_fast_sampler_equals_reference_when_every_box_is_renewed():
    # renewal_threshold 1 renews every box: the reference then draws no DDIM noise and one full
    # refill per step, so the fast sampler fed those same draws must give the same candidates for
    # every step but the last (which only the fast mode ensembles).
    steps, p = 3, 30
    sampler = DDIMSampler(BUFFERS["alphas_cumprod"], 2.0)
    torch.manual_seed(1)
    ref = sampler.sample_reference(MockHead(WHWH), WHWH, num_boxes=p, steps=steps, renewal_threshold=1.0)
    torch.manual_seed(1)
    init = torch.randn(1, p, 4)
    refills = [torch.randn(1, p, 4) for _ in range(steps - 1)]
    noise = torch.stack([t for r in refills for t in (torch.zeros(1, p, 4), r)])
    fast = sampler.sample(
        MockHead(WHWH), WHWH, noise=noise, steps=steps, renewal_threshold=1.0, init_boxes=init
    )
    assert fast.scores.shape == (1, steps * p)
    for name, a, b in zip(Candidates._fields, fast, ref, strict=True):
        torch.testing.assert_close(a[:, : (steps - 1) * p], b, atol=1e-5, rtol=0, msg=name)


def test_fast_sampler_batch_equals_each_image_alone():
    steps, p = 4, 24
    whwh = torch.tensor([[96.0, 64.0] * 2, [64.0, 64.0] * 2, [32.0, 96.0] * 2, [96.0, 96.0] * 2])
    sampler = DDIMSampler(BUFFERS["alphas_cumprod"], 2.0)
    gens = [torch.Generator().manual_seed(10 + b) for b in range(4)]
    noise = draw_noise(2 * steps - 1, 4, p, torch.device("cpu"), gens)
    batch = sampler.sample(MockHead(whwh), whwh, noise=noise, steps=steps, renewal_threshold=0.5)
    for b in range(4):
        alone_noise = draw_noise(
            2 * steps - 1, 1, p, torch.device("cpu"), torch.Generator().manual_seed(10 + b)
        )
        alone = sampler.sample(
            MockHead(whwh[b : b + 1]), whwh[b : b + 1], noise=alone_noise, steps=steps, renewal_threshold=0.5
        )
        for name, a, c in zip(Candidates._fields, batch, alone, strict=True):
            assert torch.equal(a[b : b + 1], c), f"{name} of image {b}"


def test_topk_candidates_match_published_inference():
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(1, 10, K, generator=g), torch.rand(1, 10, 4, generator=g) * 50
    got = topk_candidates(logits, boxes, 10)
    box, score, label = _published_inference(logits, boxes, 10)
    assert (
        torch.equal(got.boxes[0], box)
        and torch.equal(got.scores[0], score)
        and torch.equal(got.labels[0], label)
    )


def test_nms_per_image_equals_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 50, 2, generator=g) * 40
    boxes = torch.cat((xy, xy + 5 + torch.rand(3, 50, 2, generator=g) * 20), dim=-1)
    scores, labels = torch.rand(3, 50, generator=g), torch.randint(0, K, (3, 50), generator=g)
    out = nms_per_image(
        Candidates(boxes, scores, labels), num_classes=K, iou_threshold=0.5, max_detections=None
    )
    for b, (kb, ks, kl) in enumerate(out):
        keep = tv_batched_nms(boxes[b], scores[b], labels[b], 0.5)
        assert (
            torch.equal(kb, boxes[b][keep])
            and torch.equal(ks, scores[b][keep])
            and torch.equal(kl, labels[b][keep])
        )
    capped = nms_per_image(
        Candidates(boxes, scores, labels), num_classes=K, iou_threshold=0.5, max_detections=4
    )
    assert all(c[1].shape == (4,) and torch.equal(c[1], o[1][:4]) for c, o in zip(capped, out, strict=True))
    no_nms = nms_per_image(
        Candidates(boxes, scores, labels), num_classes=K, iou_threshold=None, max_detections=None
    )
    assert all(torch.equal(s, scores[b].sort(descending=True).values) for b, (_, s, _) in enumerate(no_nms))


def test_diffusion_to_boxes_maps_the_unit_square():
    img = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [-5.0, 5.0, -2.0, 9.0]]])
    boxes = diffusion_to_boxes(img, torch.tensor([[100.0, 50.0, 100.0, 50.0]]), 2.0)
    # (0, 0, 2, 2) -> cxcywh (0.5, 0.5, 1, 1) -> the whole image; out-of-range values clamp to +-2:
    # (-2, 2, -2, 2) -> cxcywh (0, 1, 0, 1) -> xyxy (0, 0.5, 0, 1.5) of the image.
    assert boxes[0, 0].tolist() == [0.0, 0.0, 100.0, 50.0]
    assert boxes[0, 1].tolist() == [0.0, 25.0, 0.0, 75.0]


def test_draw_noise_rejects_wrong_generator_count():
    with pytest.raises(ValueError, match="generator"):
        draw_noise(3, 2, 5, torch.device("cpu"), [torch.Generator()])


def test_fast_sampler_rejects_noise_of_the_wrong_size():
    sampler = DDIMSampler(BUFFERS["alphas_cumprod"], 2.0)
    with pytest.raises(ValueError, match=r"noise must be \[3, 1, P, 4\]"):
        sampler.sample(MockHead(WHWH), WHWH, noise=torch.zeros(2, 1, 5, 4), steps=2, renewal_threshold=0.5)
