"""Shared pieces of the evaluation tests: tiny datasets made from coco128, and a stub detector whose
detections are known, so metrics are not all zero and a sharded run has something to disagree on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from diffdet.data.coco import CocoDetection

ROOT = Path(__file__).resolve().parents[2]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
ANNOTATIONS = COCO128 / "annotations" / "instances_train2017.json"


def lvis_file(path: Path, num_images: int) -> Path:
    """The first coco128 images as an LVIS v1 file (every LVIS category; COCO category c -> LVIS id c;
    negative and not-exhaustive categories on some images), written to ``path``."""
    from diffdet.metadata.lvis import lvis_v1_categories

    coco = json.loads(ANNOTATIONS.read_text())
    images = sorted(coco["images"], key=lambda img: img["id"])[:num_images]
    kept = {img["id"] for img in images}
    annotations = [
        {k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area")}
        for a in coco["annotations"]
        if a["image_id"] in kept and not a["iscrowd"]
    ]
    lvis_images = [
        {"id": img["id"], "height": img["height"], "width": img["width"], "coco_url": img["coco_url"],
         "neg_category_ids": [1000 + i], "not_exhaustive_category_ids": [] if i % 2 else [1]}
        for i, img in enumerate(images)
    ]  # fmt: skip
    categories = [
        {"id": c.id, "name": c.name, "synset": c.synset, "frequency": c.frequency, "image_count": 1}
        for c in lvis_v1_categories()
    ]
    path.write_text(json.dumps({"images": lvis_images, "annotations": annotations, "categories": categories}))
    return path


def _key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


class StubDetector(torch.nn.Module):
    """Returns each image's ground truth (found by its pixels), jittered, plus one false positive; the
    jitter and the scores come from the sampler's ``generator`` (one per image) when one is given.

    Args:
        dataset: the evaluated dataset (its records and categories).
    """

    def __init__(self, dataset: CocoDetection) -> None:
        super().__init__()
        self.records = {_key(dataset[i]["image"]): dataset.records[i] for i in range(len(dataset))}
        self.category_ids, self.class_names = list(dataset.category_ids), list(dataset.class_names)
        self.cfg = SimpleNamespace(num_proposals=7, sample_steps=1, min_size_test=800, max_size_test=1333)

    def forward(self, images: list[torch.Tensor], generator=None, **knobs) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for i, image in enumerate(images):
            record = self.records[_key(image.cpu())]
            gen = generator[i] if generator is not None else None
            boxes = torch.from_numpy(record.boxes).float().reshape(-1, 4)
            boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 30.0, 40.0]])])
            n = len(boxes)
            boxes = boxes + 4 * torch.randn(n, 4, generator=gen)
            labels = torch.cat([torch.from_numpy(record.labels).long(), torch.zeros(1, dtype=torch.long)])
            outputs.append({"boxes": boxes, "scores": torch.rand(n, generator=gen), "labels": labels})
        return outputs


def use_stub_detector(setattr_) -> None:
    """Make ``diffdet eval`` score a :class:`StubDetector` of the dataset it reads instead of ``--weights``.

    Args:
        setattr_: ``monkeypatch.setattr`` (undone after the test), or ``setattr`` in a subprocess.
    """
    import diffdet.cli.eval as cli

    read = cli.evaluation_dataset
    built: list[CocoDetection] = []

    def dataset(*args, **kwargs) -> CocoDetection:
        built.append(read(*args, **kwargs))
        return built[-1]

    setattr_(cli, "evaluation_dataset", dataset)
    setattr_(cli, "load_detector", lambda weights, device, **overrides: StubDetector(built[-1]))
