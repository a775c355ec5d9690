"""``python -m diffdet.train --config CONFIG [key=value ...] [--resume] [--weights PATH] [--output-dir DIR]``.

Single process, or DDP under ``torchrun`` (one or several machines) or SLURM's ``srun`` (NCCL on
GPUs, gloo on CPUs; docs/multinode.md). Rank 0 logs, evaluates and writes checkpoints,
``metrics.jsonl`` and the resolved ``config.yaml`` into the output folder, which every machine must
share.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

import numpy as np
import torch

from diffdet.config import Config, dump_config, load_config
from diffdet.data.coco import CocoDetection
from diffdet.data.crowdhuman import detection_dataset
from diffdet.data.transforms import TrainTransform
from diffdet.engine import distributed as du
from diffdet.engine.trainer import Trainer
from diffdet.errors import InputError


def build_datasets(cfg: Config) -> tuple[CocoDetection, CocoDetection | None]:
    """The training set (with the reference's augmentation) and the evaluation set (original size).

    Each is a CocoDetection, or a CrowdHumanDetection for odgt annotations (``data.annotation_format``).
    The evaluation set is None when ``data.val_annotations`` is empty.
    """
    d = cfg.data
    transform = TrainTransform(
        d.min_size_train, d.max_size_train, d.flip_prob, d.crop, d.crop_resize, d.crop_size
    )
    kind = {"annotation_format": d.annotation_format, "crowdhuman_box": d.crowdhuman_box}
    train_set = detection_dataset(
        d.train_images, d.train_annotations, transform, d.skip_bad, d.max_train_images, **kind
    )
    train_set.check_resizable(min(d.min_size_train), d.max_size_train)  # now, not in a loader worker
    val_set = None
    if d.val_annotations:
        val_set = detection_dataset(
            d.val_images, d.val_annotations, None, d.skip_bad, d.max_val_images, **kind
        )
        val_set.check_resizable(cfg.model.min_size_test, cfg.model.max_size_test)
    return train_set, val_set


def with_dataset_classes(cfg: Config, dataset: CocoDetection) -> Config:
    """``cfg`` with ``model.category_ids`` and ``model.class_names`` taken from the training set.

    Raises:
        InputError: ``model.num_classes`` differs from the dataset's number of categories.
    """
    if cfg.model.num_classes != len(dataset.category_ids):
        raise InputError(
            f"model.num_classes is {cfg.model.num_classes} but the training set has "
            f"{len(dataset.category_ids)} categories; set model.num_classes={len(dataset.category_ids)}"
        )
    model = dataclasses.replace(
        cfg.model, category_ids=tuple(dataset.category_ids), class_names=tuple(dataset.class_names)
    )
    return dataclasses.replace(cfg, model=model)


def set_fed_loss_weights(model: torch.nn.Module, train_set: CocoDetection, power: float) -> None:
    """Give ``model.criterion`` the federated-loss weights of the training annotation file:
    each category's ``image_count`` (LVIS files have it) or else its number of training images with
    an annotation of it, raised to ``power`` (REFERENCE.md §10)."""
    from diffdet.losses.fed_loss import class_image_counts, fed_loss_weights

    counts = class_image_counts(list(train_set.coco.cats.values()), train_set.image_category_ids())
    model.criterion.set_fed_loss_weights(fed_loss_weights(counts, power))


def run(cfg: Config, resume: bool = False, weights: str | None = None) -> dict[str, float] | None:
    """Train (or resume) a detector as ``cfg`` says; returns the final metrics on rank 0.

    Args:
        cfg (Config): the run's configuration.
        resume (bool): continue from ``last_checkpoint`` in ``train.output_dir`` if there is one.
        weights (str | None): ImageNet backbone weights to start from (ignored when resuming).

    Returns:
        dict[str, float] | None: AP, AP50, ... of the last evaluation (AP50, mMR, recall, JI on
        CrowdHuman; None on other ranks or without an evaluation set).

    Raises:
        DistributedError: the processes did not all start, or one died or stopped answering, within
            ``train.dist_timeout``.
        ResumeMismatchError: ``resume`` with another number of processes than the checkpoint's.
    """
    du.launch_from_env()  # under srun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR from SLURM's variables
    device = du.resolve_device(cfg.train.device)
    created = du.init_distributed(device, cfg.train.dist_timeout)
    try:
        with du.peer_failures_as_errors(cfg.train.dist_timeout):
            return _train(cfg, device, resume, weights)
    finally:
        if created:
            du.shutdown()


def _train(cfg: Config, device: torch.device, resume: bool, weights: str | None) -> dict[str, float] | None:
    """:func:`run` once the process group (if any) is formed."""
    from diffdet.modeling.build import build_detector

    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    train_set, val_set = build_datasets(cfg)
    if val_set is not None and val_set.is_lvis:
        from diffdet.evaluation.lvis import require_lvis

        require_lvis()  # now, not after training
    cfg = with_dataset_classes(cfg, train_set)
    torch.manual_seed(cfg.train.seed)
    try:
        model = build_detector(cfg.model).to(device)
    except ValueError as err:  # a setting the builders refuse: an unknown backbone or norm name
        raise InputError(f"model config: {err}") from err
    if cfg.model.loss.use_fed_loss:
        set_fed_loss_weights(model, train_set, cfg.model.loss.fed_loss_freq_weight_power)
    if weights and not resume:
        from diffdet.checkpoint import load_backbone_weights

        report = load_backbone_weights(model, weights)
        if du.is_main_process():
            print(f"backbone weights from {weights}: {report}")
    # Per-process training randomness (diffusion t and noise; Python's random picks GT subsets).
    torch.manual_seed(cfg.train.seed + du.get_rank())
    random.seed(cfg.train.seed + du.get_rank())
    np.random.seed((cfg.train.seed + du.get_rank()) % 2**32)
    trainer = Trainer(cfg, model, train_set, device, val_set)
    if resume and trainer.resume() and du.is_main_process():
        print(f"resumed from iteration {trainer.iteration} in {cfg.train.output_dir}")
    if du.is_main_process():
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, trainer.output_dir / "config.yaml")
    return trainer.train()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m diffdet.train`` and ``diffdet train``."""
    parser.add_argument("--config", help="YAML file or preset name (e.g. coco_r50_500boxes, quickstart)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the output folder's last checkpoint"
    )
    parser.add_argument(
        "--weights",
        help="ImageNet backbone weights (ResNet: torchvision .pth or detectron2 .pkl; Swin: .pth or .pkl)",
    )
    parser.add_argument("--output-dir", help="shorthand for train.output_dir=DIR")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="shorthand for train.dist_timeout=SECONDS: how long processes wait for each other",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=1e-4"
    )


def _config_path(name: str | None) -> str | None:
    """A YAML path as given, or the shipped preset of that name when no such file exists."""
    if name is None or Path(name).exists() or name.endswith((".yaml", ".yml")):
        return name
    from diffdet.configs import preset_path

    return str(preset_path(name))


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config: the file or preset of ``--config`` with the overrides and shorthands."""
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.dist_timeout is not None:
        overrides.append(f"train.dist_timeout={args.dist_timeout}")
    return load_config(_config_path(args.config), overrides)


def run_args(args: argparse.Namespace) -> int:
    """Train from parsed arguments; returns the exit status.

    Raises:
        InputError: an unusable config, dataset or weights file (the caller prints it as one line).
    """
    cfg = config_from_args(args)
    # InputError and DistributedError become one line in diffdet.cli.failure
    metrics = run(cfg, resume=args.resume, weights=args.weights)
    if metrics is not None:
        name = "CrowdHuman" if "mMR" in metrics else "box AP"
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m diffdet.train``; returns the exit status."""
    from diffdet.cli.failure import CommandParser, run_command

    parser = CommandParser(prog="python -m diffdet.train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_command(parser.prog, lambda: run_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
