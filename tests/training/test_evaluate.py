"""COCO evaluation: results use the dataset's category ids; perfect detections score AP 1."""

from __future__ import annotations

import torch

from diffdet.data.coco import CocoDetection
from diffdet.evaluation import build_evaluator, inference_on_dataset
from diffdet.evaluation.coco import coco_box_ap
from diffdet.evaluation.results import to_coco_results


class Oracle(torch.nn.Module):
    """Returns the GT of each image (looked up by its pixels) as detections with score 1."""

    def __init__(self, dataset: CocoDetection, wrong_label: bool = False) -> None:
        super().__init__()
        self.records = dataset.records
        self.images = [dataset[i]["image"] for i in range(len(dataset))]
        self.wrong_label = wrong_label

    def forward(self, images):
        outputs = []
        for image in images:
            index = next(i for i, im in enumerate(self.images) if torch.equal(im, image))
            record = self.records[index]
            labels = torch.from_numpy(record.labels)
            outputs.append(
                {
                    "boxes": torch.from_numpy(record.boxes).float(),
                    "scores": torch.ones(len(labels)),
                    "labels": (labels + 1) % 4 if self.wrong_label else labels,
                }
            )
        return outputs


def test_results_map_contiguous_labels_to_category_ids():
    out = {
        "boxes": torch.tensor([[1.0, 2.0, 4.0, 6.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    (entry,) = to_coco_results(7, out, [10, 20, 30])
    assert entry == {"image_id": 7, "category_id": 20, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}


def test_perfect_detections_score_one_and_wrong_classes_zero(tiny_data, tmp_path):
    val = CocoDetection(tiny_data["val_images"], tiny_data["val_annotations"])
    metrics = inference_on_dataset(Oracle(val), val, build_evaluator(val, tmp_path / "r.json"), batch_size=2)
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0
    assert (tmp_path / "r.json").is_file()
    wrong = inference_on_dataset(Oracle(val, wrong_label=True), val, build_evaluator(val), batch_size=2)
    assert wrong["AP50"] == 0.0
    assert coco_box_ap(val.coco, [], [r.image_id for r in val.records])["AP"] == 0.0
