"""CrowdHuman metrics: hand-worked cases, and AP/mMR/matching against independent brute-force versions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from diffdet.evaluation.crowdhuman import (
    MR_REFERENCE_FPPI,
    ImageBoxes,
    clip_to_image,
    crowdhuman_metrics,
    jaccard_index,
    max_weight_matching,
)

P1, P2, P3 = [10, 10, 30, 50], [50, 10, 70, 50], [20, 20, 60, 80]  # persons, xyxy pixels
FP_BOX = [80, 80, 95, 95]  # overlaps no person


def image(persons, dets=(), scores=(), ignore=(), size=(100, 100)) -> ImageBoxes:
    gt = np.array([*persons, *ignore], dtype=np.float64).reshape(-1, 4)
    flags = np.array([False] * len(persons) + [True] * len(ignore))
    dt = np.array(dets, np.float64).reshape(-1, 4)
    return ImageBoxes(gt, flags, dt, np.array(scores, np.float64), *size)


def test_a_perfect_detector():
    images = [image([P1, P2], [P1, P2], [0.9, 0.8]), image([P3], [P3], [0.7])]
    m = crowdhuman_metrics(images)
    # The toolkit's trapezoid starts at the first detection's (recall 1/3, precision 1): area 1 − 1/3.
    assert m["AP50"] == pytest.approx(2 / 3)
    assert crowdhuman_metrics(images, ap_from_zero_recall=True)["AP50"] == pytest.approx(1.0)
    assert m["mMR"] == 0.0 and m["recall"] == 1.0
    assert m["JI"] == pytest.approx(1.0, abs=1e-5)  # k / (k + 1e-6) per image


def test_one_missed_object():
    images = [image([P1, P2], [P1, P2], [0.9, 0.8]), image([P3])]
    m = crowdhuman_metrics(images)
    assert m["AP50"] == pytest.approx(1 / 3)  # points (1/3, 1), (2/3, 1)
    assert crowdhuman_metrics(images, ap_from_zero_recall=True)["AP50"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["mMR"] == pytest.approx(1 / 3)  # no false positive: the miss rate is 1/3 at every FPPI
    # Image 1 scores 2/2, image 2 (one person, no detection) 0/1; best threshold 0.0.
    assert m["JI"] == pytest.approx(0.5, abs=1e-6)


def test_one_false_positive():
    # The false positive (image 2, score 0.85) ranks second: TP, FP, TP, TP.
    images = [image([P1, P2], [P1, P2], [0.9, 0.8]), image([P3], [P3, FP_BOX], [0.7, 0.85])]
    m = crowdhuman_metrics(images)
    # recall 1/3, 1/3, 2/3, 1; precision 1, 1/2, 2/3, 3/4.
    assert m["AP50"] == pytest.approx(0 + (1 / 3) * (1 / 2 + 2 / 3) / 2 + (1 / 3) * (2 / 3 + 3 / 4) / 2)
    assert m["recall"] == 1.0
    # FPPI 0, 1/2, 1/2, 1/2 over 2 images: the seven reference FPPIs <= 0.5 take the miss rate at the
    # first point with FPPI >= f (2/3, after the FP); 0.5623 and 1 are never reached and take the
    # last point (miss rate 0), so the geometric mean is 0, as the toolkit computes it.
    assert m["mMR"] == 0.0
    # JI: at t = 0.8 only P1 and the FP remain: image 1 scores 1/2, image 2 0/1 -> 1/4; at t <= 0.7
    # everything: image 1 scores 1, image 2 1/(1 + 2 − 1) = 1/2 -> 3/4 (the best).
    assert m["JI"] == pytest.approx(0.75, abs=1e-6)
    # A false positive scored below every true positive leaves AP unchanged.
    low = [image([P1, P2], [P1, P2], [0.9, 0.8]), image([P3], [P3, FP_BOX], [0.7, 0.01])]
    assert crowdhuman_metrics(low)["AP50"] == pytest.approx(2 / 3)


def test_missed_object_and_false_positive_give_a_hand_computed_mmr():
    images = [image([P1, P2], [P1, P2], [0.9, 0.8]), image([P3], [FP_BOX], [0.85])]
    m = crowdhuman_metrics(images)
    # FPPI 0, 1/2, 1/2; miss rate 2/3, 2/3, 1/3: seven references take 2/3, the last two take 1/3.
    assert m["mMR"] == pytest.approx((2 / 3) ** (7 / 9) * (1 / 3) ** (2 / 9))
    assert m["AP50"] == pytest.approx((1 / 3) * (1 / 2 + 2 / 3) / 2)
    assert m["recall"] == pytest.approx(2 / 3)


def test_a_detection_on_an_ignore_region_is_not_counted():
    region = [60, 60, 100, 100]
    on_region = [65, 65, 95, 95]  # IoA 1 with the region, scored above both true positives
    images = [image([P1, P2], [on_region, P1, P2], [0.95, 0.9, 0.8], ignore=[region])]
    m = crowdhuman_metrics(images)
    assert m["AP50"] == pytest.approx(0.5) and m["recall"] == 1.0 and m["mMR"] == 0.0
    assert m["JI"] == pytest.approx(1.0, abs=1e-5)  # n = 3 detections − 1 on the region
    # Were the region a person, the detection (IoU 900/1600 with it) would be a third true positive.
    as_person = crowdhuman_metrics([image([P1, P2, region], [on_region, P1, P2], [0.95, 0.9, 0.8])])
    assert as_person["recall"] == 1.0 and as_person["AP50"] == pytest.approx(2 / 3)
    # A detection covering a region by IoA <= 0.5 stays a false positive, ranked first: points
    # (recall, precision) (0, 0), (1/2, 1/2), (1, 2/3).
    half = [50, 50, 70, 70]  # IoA 100/400 with the region
    fp = [image([P1, P2], [half, P1, P2], [0.95, 0.9, 0.8], ignore=[region])]
    assert crowdhuman_metrics(fp)["AP50"] == pytest.approx(0.5 * (0 + 1 / 2) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2)


def test_ji_leaves_out_missed_persons_inside_ignore_regions():
    region = [0, 50, 100, 100]
    inside = [10, 60, 40, 90]  # a person box within the region, not detected
    images = [image([P1, inside], [P1], [0.9], ignore=[region])]
    assert jaccard_index(images) == pytest.approx(1.0, abs=1e-5)  # k = 1, m = 2 − 1, n = 1
    assert crowdhuman_metrics(images)["recall"] == 0.5  # AP and recall still count it


def test_boxes_are_clipped_to_the_image_as_the_toolkit_does():
    clipped = clip_to_image(np.array([[-5, -5, 120, 90], [99.5, 10, 130, 20]]), height=80, width=100)
    np.testing.assert_array_equal(clipped, [[0, 0, 100, 80], [99, 10, 100, 20]])
    # A person box reaching outside the image is matched by a detection of its visible part.
    assert crowdhuman_metrics([image([[-40, 10, 60, 50]], [[0, 10, 60, 50]], [1.0])])["recall"] == 1.0


def test_mmr_reference_points_are_nine_log_spaced_fppis_as_the_toolkit_rounds_them():
    assert len(MR_REFERENCE_FPPI) == 9
    np.testing.assert_allclose(MR_REFERENCE_FPPI, np.logspace(-2, 0, 9), rtol=1e-3)


def test_no_detection_and_bad_input():
    m = crowdhuman_metrics([image([P1])])
    assert m == {"AP50": 0.0, "mMR": 1.0, "recall": 0.0, "JI": 0.0}
    with pytest.raises(ValueError, match="images"):
        crowdhuman_metrics([])
    with pytest.raises(ValueError, match="no person box"):
        crowdhuman_metrics([image([], ignore=[P1])])


# -- independent versions: the toolkit's loops, written out, and brute force --------------------------


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ioa(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    area = (a[2] - a[0]) * (a[3] - a[1])
    return max(iw, 0) * max(ih, 0) / area if area > 0 else 0.0


def _labelled(images) -> list[tuple[float, int]]:
    """(score, 1 TP / 0 FP) of every kept detection, by the toolkit's per-detection loop."""
    out = []
    for im in images:
        gt = [(list(b), 0 if ig else 1) for b, ig in zip(im.gt_boxes, im.gt_ignore, strict=True)]
        gt.sort(key=lambda g: g[1], reverse=True)  # persons first, stable
        dets = sorted(zip(im.dt_boxes.tolist(), im.dt_scores.tolist(), strict=True), key=lambda d: -d[1])
        taken = [False] * len(gt)
        for box, score in dets:
            best, best_j = 0.5, -1
            for j, (g, tag) in enumerate(gt):
                if taken[j]:
                    continue
                if tag == 1:
                    if _iou(box, g) > best:
                        best, best_j = _iou(box, g), j
                elif best_j >= 0:
                    break
                elif _ioa(box, g) > 0.5:
                    best_j = j
            if best_j < 0:
                out.append((score, 0))
            elif gt[best_j][1] == 1:
                taken[best_j] = True
                out.append((score, 1))
    return sorted(out, key=lambda d: -d[0])


def _brute_mmr_and_ap(images) -> tuple[float, float]:
    labelled = _labelled(images)
    num_gt = sum(int((~im.gt_ignore).sum()) for im in images)
    points = []
    for k in range(1, len(labelled) + 1):  # each prefix counted from scratch
        tp = sum(lab for _, lab in labelled[:k])
        fp = k - tp
        points.append((fp / len(images), 1 - tp / num_gt, tp / num_gt, tp / k))
    logs = []
    for ref in MR_REFERENCE_FPPI:
        reached = [p for p in points if p[0] >= ref]
        logs.append(math.log(max((reached[0] if reached else points[-1])[1], 1e-300)))
    mmr = math.exp(sum(logs) / len(logs))
    ap = sum((b[2] - a[2]) * (a[3] + b[3]) / 2 for a, b in itertools.pairwise(points))
    return mmr, ap


def _random_images(rng, count: int) -> list[ImageBoxes]:
    images = []
    for _ in range(count):
        n_person, n_ignore, n_det = rng.integers(1, 6), rng.integers(0, 3), rng.integers(0, 9)
        xy = rng.uniform(0, 60, (n_person + n_ignore, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 40, xy.shape)], axis=1)
        # Detections: jittered copies of GT boxes (some hits, some near misses) and random boxes.
        src = gt[rng.integers(0, len(gt), n_det)] + rng.normal(0, 4, (n_det, 4))
        rand = np.concatenate([d := rng.uniform(0, 70, (n_det, 2)), d + rng.uniform(5, 30, (n_det, 2))], 1)
        dets = np.where(rng.random((n_det, 1)) < 0.7, src, rand)
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 1)
        scores = rng.choice([0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95], n_det)  # ties on purpose
        flags = np.array([False] * n_person + [True] * n_ignore)
        images.append(ImageBoxes(gt, flags, dets, scores, 90, 100))
    return images


@pytest.mark.parametrize("seed", range(6))
def test_mmr_and_ap_match_a_brute_force_implementation(seed):
    rng = np.random.default_rng(seed)
    images = _random_images(rng, int(rng.integers(3, 40)))
    # The toolkit clips boxes to the image first (tested above); the brute force takes them clipped.
    for im in images:
        im.gt_boxes, im.dt_boxes = clip_to_image(im.gt_boxes, 90, 100), clip_to_image(im.dt_boxes, 90, 100)
    m = crowdhuman_metrics(images)
    mmr, ap = _brute_mmr_and_ap(images)
    assert m["mMR"] == pytest.approx(mmr, abs=1e-12)
    assert m["AP50"] == pytest.approx(ap, abs=1e-12)


def _brute_matching_weight(w: np.ndarray) -> float:
    rows, cols = w.shape
    best = 0.0
    for assign in itertools.product(range(-1, cols), repeat=rows):
        used = [c for c in assign if c >= 0]
        if len(set(used)) == len(used):
            best = max(best, sum(w[r, c] for r, c in enumerate(assign) if c >= 0))
    return best


def _brute_best_matching(w: np.ndarray) -> list[tuple[int, int]]:
    """A maximum-weight matching over the positive entries, by enumerating every assignment."""
    best, best_pairs = 0.0, []
    for assign in itertools.product(range(-1, w.shape[1]), repeat=w.shape[0]):
        pairs = [(r, c) for r, c in enumerate(assign) if c >= 0 and w[r, c] > 0]
        if len({c for _, c in pairs}) == len(pairs) and sum(w[r, c] for r, c in pairs) > best + 1e-12:
            best, best_pairs = sum(w[r, c] for r, c in pairs), pairs
    return best_pairs


def _brute_jaccard(images) -> float:
    best = 0.0
    for t in range(10):
        ratios = []
        for im in images:
            persons = [b for b, ig in zip(im.gt_boxes, im.gt_ignore, strict=True) if not ig]
            regions = [b for b, ig in zip(im.gt_boxes, im.gt_ignore, strict=True) if ig]
            dets = [b for b, sc in zip(im.dt_boxes, im.dt_scores, strict=True) if sc > t / 10]
            w = np.array([[_iou(d, g) if _iou(d, g) > 0.5 else 0.0 for g in persons] for d in dets])
            pairs = _brute_best_matching(w.reshape(len(dets), len(persons)))
            free_d = [d for i, d in enumerate(dets) if i not in {i for i, _ in pairs}]
            free_g = [g for j, g in enumerate(persons) if j not in {j for _, j in pairs}]
            n = len(dets) - sum(any(_ioa(d, r) > 0.5 for r in regions) for d in free_d)
            m = len(persons) - sum(any(_ioa(g, r) > 0.5 for r in regions) for g in free_g)
            if n or m:
                ratios.append(len(pairs) / (m + n - len(pairs) + 1e-6))
        if ratios:
            best = max(best, sum(ratios) / len(ratios))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_ji_matches_a_brute_force_implementation(seed):
    rng = np.random.default_rng(100 + seed)
    images = []
    for im in _random_images(rng, 12):  # at most 5 persons + 2 regions, 8 detections: keep 5
        im.dt_boxes, im.dt_scores = im.dt_boxes[:5], im.dt_scores[:5]
        im.gt_boxes, im.dt_boxes = clip_to_image(im.gt_boxes, 90, 100), clip_to_image(im.dt_boxes, 90, 100)
        images.append(im)
    assert jaccard_index(images) == pytest.approx(_brute_jaccard(images), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_ji_matching_is_a_maximum_weight_matching(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        w = rng.random(tuple(rng.integers(0, 5, 2)))
        w[w < 0.5] = 0.0  # only IoU > 0.5 pairs are edges
        pairs = max_weight_matching(w)
        assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
        assert all(w[r, c] > 0 for r, c in pairs)
        assert sum(w[r, c] for r, c in pairs) == pytest.approx(_brute_matching_weight(w))
    # Maximum weight, not maximum cardinality (as the toolkit's maxWeightMatching): 1.0 + 1.0 > 3 · 0.6.
    w = np.array([[1.0, 0.6, 0.0], [0.0, 1.0, 0.6], [0.6, 0.0, 0.0]])
    assert sorted(max_weight_matching(w)) == [(0, 0), (1, 1)]
