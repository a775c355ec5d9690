"""Repeat-factor sampling: factors computed by hand on an LVIS-format file, the stream against a
transcription of detectron2's RepeatFactorTrainingSampler, determinism, sharding and resume."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from diffdet.config import load_config
from diffdet.data.coco import CocoDetection
from diffdet.data.loader import TrainBatchSampler
from diffdet.data.repeat_factor import repeat_factor_indices, repeat_factors_from_category_frequency


def detectron2_infinite_indices(repeat_factors: torch.Tensor, seed: int):
    """detectron2's ``RepeatFactorTrainingSampler._infinite_indices`` (shuffle=True), transcribed."""
    _int_part = torch.trunc(repeat_factors)
    _frac_part = repeat_factors - _int_part
    g = torch.Generator()
    g.manual_seed(seed)
    while True:
        rands = torch.rand(len(_frac_part), generator=g)
        rep_factors = _int_part + (rands < _frac_part).float()
        indices = []
        for dataset_index, rep_factor in enumerate(rep_factors):
            indices.extend([dataset_index] * int(rep_factor.item()))
        indices = torch.tensor(indices, dtype=torch.int64)
        randperm = torch.randperm(len(indices), generator=g)
        yield from indices[randperm].tolist()


def _lvis_file(tmp_path):
    """5 images: {1, 2}, {1, 3, 3}, {1}, {} (no annotation), {3}."""
    per_image = [[1, 2], [1, 3, 3], [1], [], [3]]
    images = [
        {"id": i + 1, "width": 8, "height": 8, "coco_url": f"x/train2017/{i + 1}.jpg",
         "neg_category_ids": [], "not_exhaustive_category_ids": []}
        for i in range(len(per_image))
    ]  # fmt: skip
    annotations = [
        {"id": 10 * i + j, "image_id": i + 1, "category_id": c, "bbox": [0, 0, 2, 2]}
        for i, cats in enumerate(per_image)
        for j, c in enumerate(cats)
    ]
    categories = [{"id": c, "name": str(c), "frequency": "r"} for c in (1, 2, 3)]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_repeat_factors_of_a_hand_made_lvis_file(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    dataset = CocoDetection(tmp_path, _lvis_file(tmp_path))
    t = 0.5
    # f(1) = 3/5, f(2) = 1/5, f(3) = 2/5 (the image with two "3"s counts once).
    r1, r2, r3 = max(1, math.sqrt(t / 0.6)), math.sqrt(t / 0.2), math.sqrt(t / 0.4)
    assert r1 == 1
    expected = torch.tensor([max(r1, r2), max(r1, r3), r1, 1.0, r3], dtype=torch.float32)
    factors = repeat_factors_from_category_frequency(dataset.image_category_ids(), t)
    assert factors.dtype == torch.float32
    torch.testing.assert_close(factors, expected, rtol=0, atol=0)
    # The LVIS threshold repeats nothing here (every category is in >= 20% of the images).
    assert repeat_factors_from_category_frequency(dataset.image_category_ids(), 0.001).tolist() == [1.0] * 5


def test_repeat_factor_arguments_are_checked():
    with pytest.raises(ValueError, match="repeat_threshold"):
        repeat_factors_from_category_frequency([[1]], 0.0)
    with pytest.raises(ValueError, match="image_categories"):
        repeat_factors_from_category_frequency([], 0.001)
    with pytest.raises(ValueError, match="sampler"):
        load_config(None, ["data.sampler=Repeat"])
    with pytest.raises(ValueError, match="repeat_factors"):
        TrainBatchSampler(4, 1, seed=0, repeat_factors=torch.ones(3))


FACTORS = torch.tensor([1.0, 2.5, 1.0, 1.3, 3.0, 1.0, 1.7])


@pytest.mark.parametrize("seed", [0, 40244023])
def test_stream_equals_detectron2s_sampler(seed):
    ours = list(itertools.islice(repeat_factor_indices(FACTORS, seed), 200))
    theirs = list(itertools.islice(detectron2_infinite_indices(FACTORS, seed), 200))
    assert ours == theirs
    assert ours == list(itertools.islice(repeat_factor_indices(FACTORS, seed), 200))  # deterministic
    assert ours != list(itertools.islice(repeat_factor_indices(FACTORS, seed + 1), 200))


def test_images_come_back_as_often_as_their_factor_on_average():
    epochs = 400
    stream = list(itertools.islice(repeat_factor_indices(FACTORS, 3), round(FACTORS.sum().item() * epochs)))
    counts = torch.bincount(torch.tensor(stream), minlength=len(FACTORS)).float() / epochs
    torch.testing.assert_close(counts, FACTORS, atol=0.1, rtol=0)  # E[floor(r) + (u < frac(r))] = r


def _take(sampler: TrainBatchSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def test_ranks_shard_the_single_process_stream_and_resume_continues_it():
    single = _take(TrainBatchSampler(7, 4, seed=5, repeat_factors=FACTORS), 10)
    expected = list(itertools.islice(repeat_factor_indices(FACTORS, 5), 40))
    assert [k[0] for batch in single for k in batch] == expected
    assert [k[1] for batch in single for k in batch] == [(5, pos) for pos in range(40)]
    ranks = [
        _take(TrainBatchSampler(7, 2, seed=5, rank=r, world_size=2, repeat_factors=FACTORS), 10)
        for r in (0, 1)
    ]
    for step, batch in enumerate(single):
        assert ranks[0][step] == batch[0::2] and ranks[1][step] == batch[1::2]  # rank r: r, r + W, ...
    resumed = _take(TrainBatchSampler(7, 4, seed=5, repeat_factors=FACTORS, start_batch=6), 4)
    assert resumed == single[6:]
