"""``diffdet info``: versions, built backends, and the backend each op uses."""

from __future__ import annotations

import argparse
import json


def info_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet info``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def info_main(args: argparse.Namespace) -> int:
    """``diffdet info``: prints the report; returns 0."""
    from diffdet.info import collect, format_info

    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
