"""pycocotools is optional: everything but COCO reading and scoring works without it (as on the GPU
machine), and what needs it fails with an error naming the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffdet.optional import MissingDependencyError, require

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_pycocotools(monkeypatch):
    """Make ``import pycocotools...`` fail as it does where the package is not installed."""
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)


def tiny_coco(tmp_path: Path) -> Path:
    """A valid one-image instances JSON (and its image folder) under ``tmp_path``."""
    from PIL import Image

    (tmp_path / "val").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "val" / "1.png")
    data = {
        "images": [{"id": 1, "file_name": "1.png", "height": 24, "width": 32}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [2, 3, 10, 8], "category_id": 7}],
        "categories": [{"id": 7, "name": "thing"}],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps(data))
    return path


def test_require_names_the_package_and_the_purpose():
    with pytest.raises(
        MissingDependencyError, match=r"COCO evaluation needs the 'nopkg' package.*pip install nopkg"
    ):
        require("nopkg_that_does_not_exist.sub", "nopkg", "COCO evaluation")
    assert issubclass(MissingDependencyError, ImportError)
    assert require("json", "json", "tests") is json


def test_reading_coco_without_pycocotools_names_it(tmp_path, no_pycocotools):
    from diffdet.data.coco import CocoDetection, load_coco

    path = tiny_coco(tmp_path)
    with pytest.raises(MissingDependencyError, match="reading COCO annotations needs the 'pycocotools'"):
        load_coco(path)
    with pytest.raises(MissingDependencyError, match="pycocotools"):
        CocoDetection(tmp_path / "val", path)


def test_scoring_without_pycocotools_names_it(no_pycocotools):
    from diffdet.evaluation.coco import coco_box_ap

    results = [{"image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 8], "score": 0.9}]
    with pytest.raises(MissingDependencyError, match="COCO evaluation needs the 'pycocotools'"):
        coco_box_ap(object(), results, [1])


def test_diffdet_eval_without_pycocotools_is_a_one_line_error(tmp_path, no_pycocotools, capsys):
    from diffdet.cli import main

    path = tiny_coco(tmp_path)
    status = main(["eval", "--data", str(path), "--weights", str(tmp_path / "w.pth"), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "diffdet eval: error:" in stderr and "'pycocotools'" in stderr and "Traceback" not in stderr


def test_the_package_imports_and_the_cli_parses_without_pycocotools():
    """In a fresh interpreter, so no module imported earlier hides an eager ``import pycocotools``."""
    code = (
        "import sys\n"
        "sys.modules['pycocotools'] = None\n"
        "import diffdet, diffdet.data, diffdet.evaluation.evaluator, diffdet.engine.trainer\n"
        "import diffdet.cli.quickstart\n"
        "import diffdet.cli.bench, diffdet.train\n"
        "from diffdet.cli import build_parser\n"
        "build_parser().parse_args(['bench', '--device', 'cpu'])\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
