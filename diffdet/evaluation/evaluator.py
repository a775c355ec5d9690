"""COCO box evaluation through pycocotools (LVIS-format datasets: the LVIS API).

The model runs over a COCO-format dataset; its detections (contiguous labels) are written as a COCO
results file with the dataset's own category ids and scored with ``COCOeval`` (iouType "bbox"), or
with :func:`diffdet.evaluation.lvis.lvis_box_ap` when the dataset is LVIS format.
Under DDP every process evaluates its share of the images and rank 0 scores the union.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffdet.data.coco import CocoDetection
from diffdet.data.crowdhuman import CrowdHumanDetection
from diffdet.data.loader import build_test_loader
from diffdet.engine.distributed import all_gather_objects, get_rank, get_world_size, is_main_process
from diffdet.errors import InputError
from diffdet.evaluation import crowdhuman as crowdhuman_eval
from diffdet.optional import pycocotools

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(image_id: int, output: dict, category_ids: list[int]) -> list[dict]:
    """COCO results entries of one image.

    Args:
        image_id (int): COCO image id.
        output (dict): ``boxes`` [n, 4] xyxy pixels of the original image, ``scores`` [n],
            ``labels`` [n] contiguous class ids.
        category_ids (list[int]): dataset category id of each contiguous label.

    Returns:
        list[dict]: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection.
    """
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
    labels = output["labels"].detach().cpu().numpy().reshape(-1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [round(float(v), 3) for v in box],
            "score": round(float(score), 5),
        }
        for box, score, label in zip(xywh, scores, labels, strict=True)
    ]


def coco_box_ap(coco_gt, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """Score detections with pycocotools.

    Args:
        coco_gt (pycocotools.coco.COCO): ground truth (crowd boxes included, as COCO intends).
        results (list[dict]): COCO results entries (see :func:`to_coco_results`).
        image_ids (list[int]): the images that were evaluated.

    Returns:
        dict[str, float]: AP, AP50, AP75, APs, APm, APl as fractions in [0, 1] (−1 where a size
        range has no GT, as pycocotools reports). All zero when there are no detections.

    Raises:
        diffdet.optional.MissingDependencyError: pycocotools is not installed.
    """
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    cocoeval = pycocotools("cocoeval", "COCO evaluation")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = cocoeval.COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[:6], strict=True)}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: CocoDetection,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    results_path: str | Path | None = None,
    **inference_kwargs,
) -> dict[str, float] | None:
    """Run ``model`` over ``dataset`` and return its COCO box AP (LVIS box AP on LVIS data).

    Args:
        model (nn.Module): a detector; in eval mode ``model(images, **inference_kwargs)`` returns
            per image ``boxes`` (xyxy pixels of the given image), ``scores`` and ``labels``.
        dataset (CocoDetection): evaluation images at their original size (no transform).
        device (torch.device): where the model runs.
        batch_size (int): images per forward pass.
        num_workers (int): DataLoader workers.
        results_path (str | Path | None): write the COCO results JSON here (rank 0).
        **inference_kwargs: per-call inference knobs passed to the model (``num_boxes``, ``steps``...).

    Returns:
        The metrics of :func:`coco_box_ap` on rank 0 (those of
        :func:`diffdet.evaluation.lvis.lvis_box_ap` when ``dataset.is_lvis``, of
        :func:`diffdet.evaluation.crowdhuman.score_results` for a CrowdHumanDetection); None on other ranks.
    """
    was_training = model.training
    model.eval()
    loader = build_test_loader(dataset, batch_size, num_workers, get_rank(), get_world_size())
    results, image_ids = [], []
    for images, _, metas in loader:
        outputs = model([image.to(device) for image in images], **inference_kwargs)
        for meta, output in zip(metas, outputs, strict=True):
            results.extend(to_coco_results(meta["image_id"], output, dataset.category_ids))
            image_ids.append(meta["image_id"])
    model.train(was_training)
    gathered = all_gather_objects((results, image_ids))
    if not is_main_process():
        return None
    results = [r for part, _ in gathered for r in part]
    image_ids = [i for _, part in gathered for i in part]
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(json.dumps(results))
    if isinstance(dataset, CrowdHumanDetection):  # the CrowdHuman benchmark's metrics instead of COCO AP
        return crowdhuman_eval.score_results(dataset, results, image_ids)
    if dataset.is_lvis:
        from diffdet.evaluation.lvis import lvis_box_ap

        return lvis_box_ap(dataset.coco.dataset, results, image_ids)
    return coco_box_ap(dataset.coco, results, image_ids)


class ModelWrapper:
    """A stand-in for a detector: it offers what :func:`diffdet.evaluation.evaluator.evaluate` uses of a model
    (``training``, ``eval``, ``train`` and the call) and passes mode changes to the wrapped model.
    Subclasses define the call."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self) -> ModelWrapper:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> ModelWrapper:
        self.model.train(mode)
        return self


class _Progress(ModelWrapper):
    """A detector whose every call advances a progress bar by its number of images."""

    def __init__(self, model: nn.Module, bar) -> None:
        super().__init__(model)
        self.bar = bar

    def __call__(self, images: list[torch.Tensor], **kwargs: object) -> list[dict[str, torch.Tensor]]:
        out = self.model(images, **kwargs)
        self.bar.update(len(images))
        return out


def run_eval(
    model: nn.Module, dataset: CocoDetection, *, batch_size: int = 1, results_path: Path | None = None,
    progress: bool = True, **inference_kwargs: object,
) -> dict[str, float]:  # fmt: skip
    """COCO box AP of ``model`` on ``dataset`` (see :func:`evaluate`), with a progress bar.

    Raises:
        InputError: the model's categories are not the dataset's, or an image cannot be read.
    """
    from tqdm import tqdm

    from diffdet.data.coco import BadImageError
    from diffdet.evaluation.evaluator import evaluate

    if tuple(model.category_ids) != tuple(dataset.category_ids):
        raise InputError(
            f"the weights detect {len(model.category_ids)} categories (ids {list(model.category_ids)[:5]}..."
            f"), the dataset has {len(dataset.category_ids)} (ids {list(dataset.category_ids)[:5]}...)"
        )
    device = model.device
    with tqdm(total=len(dataset), desc="eval", unit="img", disable=not progress) as bar:
        try:
            metrics = evaluate(
                _Progress(model, bar), dataset, device, batch_size=batch_size, results_path=results_path,
                **inference_kwargs,
            )  # fmt: skip
        except BadImageError as err:
            raise InputError(str(err)) from err
    return metrics
