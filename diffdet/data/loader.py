"""Data loading: a resumable infinite training stream, aspect-ratio grouping, collate, test loader.

The training stream is one global sequence g_0, g_1, ... of ``(image index, augmentation seed)``:
epoch e is a permutation of the dataset drawn from ``seed + e``, and position i's augmentation seed
is ``(seed, i)``. Process r of W takes the positions i ≡ r (mod W), so W processes with batch b each
see exactly the images and augmentations one process sees with batch W·b (without aspect grouping).
Batches are a pure function of (seed, rank, world size, batch size, grouping), so resuming at batch
k only replays index arithmetic, never image loading, and continues as an uninterrupted run would.

With repeat factors (LVIS, :mod:`diffdet.data.repeat_factor`) the global image sequence is instead
the repeat-factor stream of one generator seeded with ``seed``; positions, augmentation seeds,
sharding and resume work the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from diffdet.data.repeat_factor import repeat_factor_indices


def collate(batch: list[dict]) -> tuple[list[torch.Tensor], list[dict], list[dict]]:
    """Split dataset items into model inputs and metadata (images keep their own sizes).

    Args:
        batch (list[dict]): items of :class:`~diffdet.data.coco.CocoDetection`.

    Returns:
        ``(images, targets, metas)``: uint8 [3, H, W] RGB tensors; ``{"boxes": float32 [n, 4]
        xyxy pixels of the image, "labels": int64 [n]}`` per image; ``{"image_id", "orig_size"}``.
    """
    images = [item["image"] for item in batch]
    targets = [{"boxes": item["boxes"], "labels": item["labels"]} for item in batch]
    metas = [{"image_id": item["image_id"], "orig_size": item["orig_size"]} for item in batch]
    return images, targets, metas


class TrainBatchSampler(torch.utils.data.Sampler):
    """Infinite, resumable batches of ``(index, seed)`` keys for one process.

    Args:
        dataset_size (int): number of images N.
        batch_size (int): images per batch on this process.
        seed (int): seed of the permutations and augmentations (shared by all processes).
        rank (int): this process's rank.
        world_size (int): number of processes.
        groups (np.ndarray | None): int [N] aspect group of every image; when given, a batch only
            holds images of one group (filled in stream order, as detectron2's grouping does).
        start_batch (int): number of batches already consumed (for resume).
        repeat_factors (torch.Tensor | None): float32 [N] per-image repeat factors; when given, the
            global sequence is the repeat-factor stream (detectron2's RepeatFactorTrainingSampler)
            instead of one permutation per epoch.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: np.ndarray | None = None,
        start_batch: int = 0,
        repeat_factors: torch.Tensor | None = None,
    ) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.groups = None if groups is None else np.asarray(groups)
        self.start_batch = start_batch
        if repeat_factors is not None and repeat_factors.shape != (dataset_size,):
            raise ValueError(f"repeat_factors must be [{dataset_size}], got {tuple(repeat_factors.shape)}")
        self.repeat_factors = repeat_factors

    def _stream(self) -> Iterator[tuple[int, tuple[int, int]]]:
        """This process's share of the global stream, as ``(index, (seed, position))``."""
        if self.repeat_factors is not None:
            shared = enumerate(repeat_factor_indices(self.repeat_factors, self.seed))
            for pos, index in itertools.islice(shared, self.rank, None, self.world_size):
                yield index, (self.seed, pos)
            return
        epoch, perm = -1, None
        for pos in itertools.count(self.rank, self.world_size):
            if pos // self.n != epoch:
                epoch = pos // self.n
                generator = torch.Generator().manual_seed(self.seed + epoch)
                perm = torch.randperm(self.n, generator=generator).tolist()
            yield perm[pos % self.n], (self.seed, pos)

    def _batches(self) -> Iterator[list[tuple[int, tuple[int, int]]]]:
        stream = self._stream()
        if self.groups is None:
            while True:
                yield list(itertools.islice(stream, self.batch_size))
        buckets: dict[int, list] = {}
        for key in stream:
            bucket = buckets.setdefault(int(self.groups[key[0]]), [])
            bucket.append(key)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int]]]]:
        return itertools.islice(self._batches(), self.start_batch, None)


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int,
    num_workers: int,
    aspect_ratio_grouping: bool,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    repeat_factors: torch.Tensor | None = None,
) -> torch.utils.data.DataLoader:
    """An infinite training loader yielding ``(images, targets, metas)`` (see :func:`collate`).

    Args:
        dataset: a :class:`~diffdet.data.coco.CocoDetection` with a training transform.
        batch_size (int): images per batch on this process.
        seed (int): data-order and augmentation seed.
        num_workers (int): DataLoader worker processes (0 loads in the main process).
        aspect_ratio_grouping (bool): batch landscape and portrait images separately.
        start_batch (int): batches to skip (already consumed before a resume).
        rank (int): this process's rank.
        world_size (int): number of processes.
        repeat_factors (torch.Tensor | None): per-image repeat factors for repeat-factor sampling.
    """
    groups = dataset.aspect_groups() if aspect_ratio_grouping else None
    sampler = TrainBatchSampler(
        len(dataset), batch_size, seed, rank, world_size, groups, start_batch, repeat_factors
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
    )


def build_test_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1
) -> torch.utils.data.DataLoader:
    """A loader over this process's share (indices ≡ rank mod world_size) of a test dataset, in order."""
    indices = list(range(rank, len(dataset), world_size))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
