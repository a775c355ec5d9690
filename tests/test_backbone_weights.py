"""ImageNet backbone weights: detectron2 .pkl through the restricted unpickler, torchvision .pth names."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from diffdet.checkpoint import load_backbone_weights, load_pickle
from diffdet.checkpoint.backbone_weights import torchvision_to_detectron2_name
from diffdet.modeling.backbone import build_backbone, build_resnet, set_inference_folding

torchvision = pytest.importorskip("torchvision")


def _d2_pickle(state: dict[str, torch.Tensor], path, protocol: int) -> None:
    # The layout of detectron2's tools/convert-torchvision-to-d2.py output.
    model = {k: v.numpy() for k, v in state.items()}
    model["stem.fc.weight"] = np.zeros((10, 512), np.float32)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f, protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pickle_loads_into_the_trunk(tmp_path, protocol):
    source = build_resnet("R18")
    for buffer in source.buffers():
        buffer.uniform_(0.5, 1.5)
    path = tmp_path / "R-18.pkl"
    _d2_pickle(source.state_dict(), path, protocol)
    target = build_backbone("R18")
    report = load_backbone_weights(target, path)
    assert report.missing == [] and report.ignored == ["stem.fc.weight"]
    assert len(report.loaded) == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.bottom_up.state_dict()[key], value), key


def test_torchvision_resnet50_weights_give_torchvision_features(tmp_path):
    # Independent check of the renaming and of the stride placement (torchvision puts it in the 3x3).
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    model = build_resnet("R50").eval()
    report = load_backbone_weights(model, path)
    assert report.missing == []
    assert sorted(report.ignored) == sorted(
        ["stem.fc.weight", "stem.fc.bias"]
        + [k for k in map(torchvision_to_detectron2_name, tv.state_dict()) if "num_batches" in k]
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        got = set_inference_folding(model, False)(x)["res5"]  # torchvision's ops: conv, then batch norm
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_names():
    assert torchvision_to_detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert torchvision_to_detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert torchvision_to_detectron2_name("layer3.0.bn2.bias") == "res4.0.conv2.norm.bias"
    assert torchvision_to_detectron2_name("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert torchvision_to_detectron2_name("layer4.0.downsample.1.weight") == "res5.0.shortcut.norm.weight"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_plain_containers(tmp_path, protocol):
    payload = {
        "set": {1, 2},
        "ordered": OrderedDict(a=np.arange(3, dtype=np.int64)),
        "raw": (bytearray(b"xy"), b"z", 1.5, None, "text"),
        "scalar": np.float32(2.5),
    }
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    loaded = load_pickle(path)
    assert loaded["set"] == {1, 2} and loaded["raw"] == payload["raw"] and loaded["scalar"] == 2.5
    assert isinstance(loaded["ordered"], OrderedDict) and loaded["ordered"]["a"].tolist() == [0, 1, 2]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "payload",
    [{"model": {"stem.conv1.weight": _Exploit()}}, {"model": eval}, np.array([None, 1], dtype=object)],
    ids=["os.system", "builtins.eval", "object-array"],
)
def test_restricted_unpickler_refuses_anything_else(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_pickle(path)
    with pytest.raises(pickle.UnpicklingError):
        load_backbone_weights(build_resnet("R18"), path)
    assert not (tmp_path / "pwned").exists()


def test_bad_backbone_files_are_explained(tmp_path):
    c2 = tmp_path / "MSRA-R-50.pkl"
    c2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}}))
    with pytest.raises(ValueError, match="Caffe2/MSRA"):
        load_backbone_weights(build_resnet("R18"), c2)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"model": {"encoder.weight": np.zeros(3, np.float32)}}))
    with pytest.raises(ValueError, match="no key matches"):
        load_backbone_weights(build_resnet("R18"), other)
    r50 = tmp_path / "R-50.pkl"
    _d2_pickle(build_resnet("R50").state_dict(), r50, 4)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_backbone_weights(build_resnet("R18"), r50)
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(build_resnet("R18"), tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match="target"):
        load_backbone_weights(torch.nn.Linear(2, 2), r50)
