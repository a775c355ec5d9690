"""CrowdHuman evaluation of a checkpoint (the library of ``diffdet eval --data annotation_val.odgt``).

A one-class CrowdHuman model is scored as it is; ``--class person`` scores one class of any model
(a COCO model's person detections, zero-shot, as the paper's Table 1), the other classes' detections
dropped. Several ``--boxes`` / ``--steps`` values evaluate every combination, one table row each.
Detections are written with ``--results`` in the CrowdHuman toolkit's format (one JSON line per
image: ``ID``, ``height``, ``width``, ``dtboxes`` of ``{"box": [x, y, w, h], "score", "tag": 1}``),
and the metrics with ``--metrics-out`` as JSON.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.errors import InputError
from diffdet.evaluation.evaluator import ModelWrapper, _Progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from diffdet.data.crowdhuman import CrowdHumanDetection


class OneClass(ModelWrapper):
    """A detector whose outputs keep only the detections of one class, relabelled 0."""

    def __init__(self, model: nn.Module, label: int) -> None:
        super().__init__(model)
        self.label = label

    def __call__(self, images: list[torch.Tensor], **kwargs: object) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for out in self.model(images, **kwargs):
            keep = out["labels"] == self.label
            out = {k: v[keep] for k, v in out.items()}
            out["labels"] = out["labels"].new_zeros(out["labels"].shape)
            outputs.append(out)
        return outputs


def class_label(model: nn.Module, class_name: str | None) -> int:
    """The contiguous label scored: ``class_name``'s among the model's classes, or 0 for a one-class model.

    Raises:
        InputError: the model has no class of that name, or several classes and no ``class_name``.
    """
    names = list(model.class_names)
    if class_name is None:
        if len(names) != 1:
            raise InputError(
                f"the weights detect {len(names)} classes; pass --class NAME to score one of them "
                f"on CrowdHuman (e.g. --class person)"
            )
        return 0
    if class_name not in names:
        raise InputError(
            f"--class {class_name}: the weights have no such class (classes: {', '.join(names[:10])}...)"
        )
    return names.index(class_name)


def write_results(path: Path, coco_results: list[dict], dataset: CrowdHumanDetection) -> None:
    """Write COCO-results entries as the CrowdHuman toolkit's detection file (module docstring)."""
    boxes: dict[int, list[dict]] = {}
    for r in coco_results:
        boxes.setdefault(int(r["image_id"]), []).append({"box": r["bbox"], "score": r["score"], "tag": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in dataset.records:
            line = {"ID": record.name, "height": record.height, "width": record.width}
            f.write(json.dumps({**line, "dtboxes": boxes.get(record.image_id, [])}) + "\n")


def sweep(boxes: list[int] | None, steps: list[int] | None) -> list[dict[str, int | None]]:
    """Every ``{"num_boxes", "steps"}`` combination (None keeps the model's default)."""
    return [{"num_boxes": b, "steps": s} for b, s in itertools.product(boxes or [None], steps or [None])]


def run_crowdhuman_eval(
    model: nn.Module, dataset: CrowdHumanDetection, label: int, *, batch_size: int = 1, seed: int = 0,
    settings: list[dict] | None = None, results_path: Path | None = None, progress: bool = True,
) -> list[dict[str, float]]:  # fmt: skip
    """CrowdHuman metrics of one class of ``model`` for each inference setting.

    Args:
        model: a detector in eval mode (``class_names``, ``cfg.num_proposals``, ``cfg.sample_steps``).
        dataset: the CrowdHuman evaluation set.
        label: the contiguous class scored (see :func:`class_label`).
        batch_size: images per forward pass.
        seed: seed of the sampler's random boxes.
        settings: ``{"num_boxes", "steps"}`` per row (None: the model's defaults).
        results_path: write the detections here (the toolkit's format); with several settings, one file
            each, named ``STEM_boxesB_stepsS.SUFFIX``.
        progress: show a progress bar.

    Returns:
        One dict per setting: ``boxes``, ``steps`` (the values used), ``AP50``, ``mMR``, ``recall``, ``JI``.

    Raises:
        InputError: an image cannot be read.
    """
    from tqdm import tqdm

    from diffdet.errors import BadImageError
    from diffdet.evaluation.evaluator import evaluate

    settings = settings or sweep(None, None)
    rows = []
    device = model.device
    for knobs in settings:
        used = {
            "boxes": model.cfg.num_proposals if knobs["num_boxes"] is None else knobs["num_boxes"],
            "steps": model.cfg.sample_steps if knobs["steps"] is None else knobs["steps"],
        }
        with tempfile.TemporaryDirectory() as tmp, tqdm(
            total=len(dataset), desc=f"eval {used['boxes']} boxes, {used['steps']} steps", unit="img",
            disable=not progress,
        ) as bar:  # fmt: skip
            coco_results = Path(tmp) / "results.json"
            try:
                metrics = evaluate(
                    _Progress(OneClass(model, label), bar), dataset, device, batch_size=batch_size,
                    results_path=coco_results, seed=seed, **knobs,
                )  # fmt: skip
            except BadImageError as err:
                raise InputError(str(err)) from err
            if results_path is not None:
                name = f"{results_path.stem}_boxes{used['boxes']}_steps{used['steps']}{results_path.suffix}"
                target = results_path if len(settings) == 1 else results_path.with_name(name)
                write_results(target, json.loads(coco_results.read_text()), dataset)
        rows.append({**used, **metrics})
    return rows
