"""The training stream: DDP shards form the single-process batches, resume replays exactly, grouping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffdet.data.loader import TrainBatchSampler


def _take(sampler: TrainBatchSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def test_two_processes_see_the_single_process_global_batches():
    single = _take(TrainBatchSampler(10, 4, seed=3), 6)
    ranks = [_take(TrainBatchSampler(10, 2, seed=3, rank=r, world_size=2), 6) for r in range(2)]
    for step, batch in enumerate(single):
        merged = sorted(ranks[0][step] + ranks[1][step], key=lambda key: key[1][1])
        assert merged == batch  # same images and the same augmentation seeds


def test_every_epoch_is_a_permutation_and_epochs_differ():
    keys = [k for batch in _take(TrainBatchSampler(7, 7, seed=0), 3) for k in batch]
    epochs = [sorted(k[0] for k in keys[e * 7 : (e + 1) * 7]) for e in range(3)]
    assert all(e == list(range(7)) for e in epochs)
    assert [k[0] for k in keys[:7]] != [k[0] for k in keys[7:14]]
    assert len({k[1] for k in keys}) == len(keys)  # one augmentation seed per position


@pytest.mark.parametrize("grouped", [False, True])
def test_resume_at_batch_k_continues_the_stream(grouped):
    groups = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1]) if grouped else None
    full = _take(TrainBatchSampler(9, 2, seed=5, groups=groups), 12)
    resumed = _take(TrainBatchSampler(9, 2, seed=5, groups=groups, start_batch=7), 5)
    assert resumed == full[7:]


def test_aspect_grouping_never_mixes_groups():
    groups = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
    for batch in _take(TrainBatchSampler(len(groups), 3, seed=1, groups=groups), 20):
        assert len({int(groups[index]) for index, _ in batch}) == 1


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        TrainBatchSampler(5, 0, seed=0)
    with pytest.raises(ValueError, match="rank"):
        TrainBatchSampler(5, 1, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="dataset_size"):
        TrainBatchSampler(0, 1, seed=0)
