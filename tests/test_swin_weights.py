"""ImageNet Swin weights for ``--weights``: the Swin repository's .pth and detectron2's .pkl of torch
tensors (REFERENCE.md §9), mapped onto the trunk; files that do not fit are refused by key."""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict

import pytest
import torch
from reference_state_dict import materialize, swin_trunk_shapes

from diffdet.checkpoint import load_backbone_weights, load_pickle
from diffdet.modeling.backbone import SWINS, build_backbone, build_resnet

TRUNK_NORMS = [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]


def classification_state(name: str, seed: int = 0, classes: int = 10) -> OrderedDict:
    """The state_dict of Microsoft's classification Swin of a size, from REFERENCE.md §9's key rules:
    the trunk keys without norm0..3, ``attn_mask`` buffers of the shifted blocks of the stages whose
    224-input grid (56, 28, 14, 7) exceeds the window, the final ``norm`` and the ``head``."""
    spec = SWINS[name]
    shapes = swin_trunk_shapes(spec.embed_dim, spec.depths, spec.num_heads, spec.window)
    meta = OrderedDict((k, torch.empty(s, device="meta")) for k, s in shapes.items() if k not in TRUNK_NORMS)
    state = materialize(meta, seed=seed)
    n = spec.window**2
    for i, depth in enumerate(spec.depths):
        grid = 56 // 2**i
        if grid > spec.window:  # a 7x7 stage equals the window: no shift, no mask
            for j in range(1, depth, 2):
                windows = (grid // spec.window) ** 2
                state[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(windows, n, n)
    width = spec.embed_dim * 8
    state["norm.weight"], state["norm.bias"] = torch.ones(width), torch.zeros(width)
    state["head.weight"], state["head.bias"] = torch.zeros(classes, width), torch.zeros(classes)
    return state


def _assert_mapped(backbone, state, report) -> None:
    trunk = backbone.bottom_up.state_dict()
    assert sorted(report.missing) == sorted(TRUNK_NORMS)  # left at their init, as the reference does
    assert sorted(report.ignored) == sorted(
        k for k in state if k.endswith("attn_mask") or k[:5] in ("norm.", "head.")
    )
    for key in report.loaded:
        assert torch.equal(trunk[key], state[key]), key
    for key in TRUNK_NORMS:
        assert bool((trunk[key] == (1.0 if key.endswith("weight") else 0.0)).all()), key


def test_swin_repository_pth_of_swin_b_22k_fills_the_trunk(tmp_path):
    state = classification_state("SwinB-22k", classes=21841)
    path = tmp_path / "swin_base_patch4_window7_224_22k.pth"
    torch.save({"model": state}, path)
    backbone = build_backbone("SwinB-22k")
    report = load_backbone_weights(backbone, path)
    # REFERENCE.md §9: 325 parameters and 24 index buffers filled; 11 attn_mask, norm.*, head.* unused.
    assert len(report.loaded) == 325 + 24 and len(report.ignored) == 11 + 4
    _assert_mapped(backbone, state, report)


@pytest.mark.parametrize("protocol", [2, 4])
def test_detectron2_pkl_of_torch_tensors_fills_the_trunk(tmp_path, protocol):
    state = OrderedDict((k, v.clone()) for k, v in classification_state("SwinNano", seed=1).items())
    path = tmp_path / "swin_nano.pkl"
    payload = {"model": state, "__author__": "third_party", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))  # torch tensors as they are, as Detic's script
    assert torch.equal(
        load_pickle(path)["model"]["patch_embed.proj.weight"], state["patch_embed.proj.weight"]
    )
    model_backbone = build_backbone("SwinNano")
    report = load_backbone_weights(model_backbone, path)
    _assert_mapped(model_backbone, state, report)


def test_swin_files_that_do_not_fit_are_refused_by_key(tmp_path):
    nano = build_backbone("SwinNano")
    deeper = classification_state("SwinNano")
    for j in (2, 3):  # a third and fourth block in stage 2: another size
        for key in [k for k in deeper if k.startswith("layers.2.blocks.0.")]:
            deeper[key.replace("blocks.0.", f"blocks.{j}.")] = deeper[key]
    torch.save({"model": deeper}, tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=r"does not fit this Swin trunk.*layers\.2\.blocks\.2\."):
        load_backbone_weights(nano, tmp_path / "deeper.pth")
    shallower = OrderedDict(
        (k, v) for k, v in classification_state("SwinNano").items() if ".blocks.1." not in k
    )
    torch.save({"model": shallower}, tmp_path / "shallower.pth")
    with pytest.raises(ValueError, match=r"missing \['layers\.0\.blocks\.1\.norm1\.weight'"):
        load_backbone_weights(nano, tmp_path / "shallower.pth")
    torch.save({"model": classification_state("SwinT")}, tmp_path / "swin_tiny.pth")
    with pytest.raises(
        ValueError, match=r"shape mismatches.*patch_embed\.proj\.weight: file \(96, 3, 4, 4\)"
    ):
        load_backbone_weights(nano, tmp_path / "swin_tiny.pth")
    torch.save(build_resnet("R18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="no key matches"):
        load_backbone_weights(nano, tmp_path / "r18.pth")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_storage_bytes_cannot_run_code(tmp_path, monkeypatch):
    # A plain pickle names torch.storage._load_from_bytes with the bytes of a legacy torch.save; those
    # bytes are read with weights_only=True, so a payload hidden there is refused, not run.
    monkeypatch.chdir(tmp_path)
    hidden = io.BytesIO()
    torch.save(_Exploit(), hidden, _use_new_zipfile_serialization=False)

    class _Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (hidden.getvalue(),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"patch_embed.proj.weight": _Storage()}}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing a pickled torch storage"):
        load_pickle(path)
    assert not (tmp_path / "pwned").exists()
