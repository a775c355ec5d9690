"""The ``--tta*`` options of ``diffdet detect`` and ``diffdet eval``, and the model wrapping they ask for."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from diffdet.errors import InputError

if TYPE_CHECKING:  # torch loads on first use, so ``diffdet --help`` stays fast
    from torch import nn

PRESET_NAMES = ("published", "fast")
"""Keys of :data:`diffdet.modeling.tta.PRESETS` (repeated here so that ``--help`` imports no torch)."""


def tta_args(parser: argparse.ArgumentParser) -> None:
    """The test-time augmentation options (off unless ``--tta``)."""
    group = parser.add_argument_group("test-time augmentation (the published TEST.AUG; off unless --tta)")
    group.add_argument(
        "--tta", action="store_true",
        help="merge the detections of resized and flipped copies of each image (26 inputs by default)",
    )  # fmt: skip
    group.add_argument(
        "--tta-preset", choices=PRESET_NAMES, default="published",
        help="published: 13 sizes 400..1800, max 4000, flip, scale filter, soft vote (26 inputs); "
        "fast: sizes 600,800,1000 with flip (6 inputs) (default published)",
    )  # fmt: skip
    group.add_argument("--tta-sizes", metavar="S1,S2,...", help="shortest edges of the inputs, pixels")
    group.add_argument("--tta-max-size", type=int, help="longest-edge cap of the inputs (default 4000)")
    group.add_argument(
        "--tta-scale-to-model", action="store_true",
        help="scale sizes, max size and scale ranges by the model's test size / 800 (for small models)",
    )  # fmt: skip
    group.add_argument("--tta-no-flip", action="store_true", help="no flipped inputs")
    group.add_argument("--tta-no-filter", action="store_true", help="no per-size scale filter")
    group.add_argument(
        "--tta-merge", choices=("softvote", "nms"), default="softvote",
        help="softvote: the published cvpods soft vote (default); nms: detectron2's class-aware NMS",
    )  # fmt: skip


def parse_sizes(text: str) -> tuple[int, ...]:
    """``--tta-sizes 600,800``: positive integers, at least one.

    Raises:
        InputError: empty, not integers, or a size <= 0.
    """
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise InputError(f"--tta-sizes: expected comma-separated integers, got {text!r}") from err
    if not sizes:
        raise InputError("--tta-sizes: give at least one size")
    if any(s <= 0 for s in sizes):
        raise InputError(f"--tta-sizes: sizes must be positive, got {text!r}")
    return sizes


def wrap_tta(model: nn.Module, args: argparse.Namespace, images: int, progress: bool) -> nn.Module:
    """``model`` as given without ``--tta``; else wrapped in :class:`DiffusionDetWithTTA` configured by
    the options, with a progress bar over the ``images`` x inputs-per-image augmented inputs.

    Raises:
        InputError: a bad ``--tta-sizes`` or ``--tta-max-size``.
    """
    if not args.tta:
        return model
    from tqdm import tqdm

    from diffdet.modeling.tta import PRESETS, REFERENCE_SIZE, DiffusionDetWithTTA

    config = PRESETS[args.tta_preset]
    changes: dict[str, object] = {"merge": args.tta_merge}
    if args.tta_sizes is not None:
        changes["sizes"] = parse_sizes(args.tta_sizes)
        changes["scale_ranges"] = None  # the published range of each size (none for other sizes)
    if args.tta_max_size is not None:
        if args.tta_max_size <= 0:
            raise InputError(f"--tta-max-size: must be positive, got {args.tta_max_size}")
        changes["max_size"] = args.tta_max_size
    if args.tta_no_flip:
        changes["flip"] = False
    if args.tta_no_filter:
        changes["scale_filter"] = False
    config = dataclasses.replace(config, **changes)
    if args.tta_scale_to_model:
        config = config.scaled(model.cfg.min_size_test / REFERENCE_SIZE)
    wrapper = DiffusionDetWithTTA(model, config)
    total = images * wrapper.inputs_per_image() or None  # None: unknown (a video that declares no count)
    bar = tqdm(total=total, desc="tta", unit="input", disable=not progress)

    def advance(count: int) -> None:
        bar.update(count)
        if total is not None and bar.n >= total:
            bar.close()

    wrapper.progress = advance
    return wrapper
