"""The evaluation interface: a :class:`DatasetEvaluator` sees a detector's outputs image by image, and
:func:`inference_on_dataset` runs the detector over a dataset feeding them to it (detectron2's
``DatasetEvaluator`` / ``inference_on_dataset``).

Under a process group every process runs its share of the images (indices ≡ rank mod world size);
the evaluator gathers the detections on rank 0, which alone scores them and writes the results file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffdet.data.loader import build_test_loader
from diffdet.engine.distributed import get_rank, get_world_size, is_main_process

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


class DatasetEvaluator:
    """Scores a detector on a dataset from its outputs, one batch at a time.

    ``reset()`` starts over, ``process(inputs, outputs)`` records a batch, ``evaluate()`` returns the
    metrics. Under a process group ``evaluate`` is collective: every process must call it.
    """

    def reset(self) -> None:
        """Forget every processed batch."""
        raise NotImplementedError

    def process(self, inputs: list[dict], outputs: list[dict[str, torch.Tensor]]) -> None:
        """Record one batch.

        Args:
            inputs: per image the loader's metadata, ``{"image_id", "orig_size"}``.
            outputs: per image the detector's ``boxes`` [n, 4] xyxy pixels of the original image,
                ``scores`` [n] and ``labels`` [n] contiguous class ids.
        """
        raise NotImplementedError

    def evaluate(self) -> dict[str, float] | None:
        """The metrics of every processed image (of every process) as fractions, on rank 0; None on
        the other ranks."""
        raise NotImplementedError


def _model_device(model: Callable) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without any)."""
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    first = next(parameters, None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def inference_on_dataset(
    model: Callable,
    data: torch.utils.data.Dataset | Iterable,
    evaluator: DatasetEvaluator,
    *,
    device: torch.device | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool | str = False,
    seed: int | None = None,
    **inference_kwargs: object,
) -> dict[str, float] | None:
    """Run ``model`` over ``data`` and return ``evaluator``'s metrics.

    Args:
        model: a detector; ``model(images, **inference_kwargs)`` returns per image ``boxes`` (xyxy
            pixels of the given image), ``scores`` and ``labels``. An ``nn.Module`` is put in eval mode
            for the run and then back in its previous mode.
        data: a dataset of original-size images (this process takes its share of them), or a loader
            yielding ``(images, targets, metas)`` batches as given.
        evaluator: what scores the outputs; reset first.
        device: where the images go (default: where the model's weights are).
        batch_size: images per forward pass (dataset only).
        num_workers: DataLoader workers (dataset only).
        progress: show a progress bar on rank 0; a string is its description.
        seed: each image's sampler noise comes from its own generator seeded with ``seed`` (as a call
            ``model([image], seed=seed)`` draws it), so the detections do not depend on the batch size
            or on which process runs the image (passed as ``generator=[one per image]``). None: the
            device's global generator.
        **inference_kwargs: per-call inference knobs (``num_boxes``, ``steps``...).

    Returns:
        ``evaluator.evaluate()``: the metrics on rank 0, None on the other ranks.
    """
    from tqdm import tqdm

    device = device or _model_device(model)
    if isinstance(data, torch.utils.data.Dataset):
        data = build_test_loader(data, batch_size, num_workers, get_rank(), get_world_size())
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    evaluator.reset()
    total = len(data.dataset) if hasattr(data, "dataset") else None
    desc = progress if isinstance(progress, str) else "eval"
    try:
        with tqdm(total=total, desc=desc, unit="img", disable=not progress or not is_main_process()) as bar:
            for images, _, metas in data:
                images = [image.to(device) for image in images]
                if seed is not None:
                    inference_kwargs["generator"] = [
                        torch.Generator(device=device).manual_seed(seed) for _ in images
                    ]
                evaluator.process(metas, model(images, **inference_kwargs))
                bar.update(len(images))
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    return evaluator.evaluate()
