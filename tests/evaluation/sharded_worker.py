"""One process of sharded ``diffdet eval`` runs (torchrun starts it, see test_sharded_eval.py).

argv[1] is a JSON list of ``{"argv": [...], "stub": bool}``, the stub runs last. The process joins the
group once, as ``diffdet eval`` would (joining again in one process can read the previous group's
addresses), and each command line goes through ``diffdet.cli.main`` in it; stub runs score
:class:`evalkit.StubDetector` instead of the weights.
"""

from __future__ import annotations

import json
import sys

import torch
from evalkit import use_stub_detector

from diffdet.cli import main
from diffdet.engine.distributed import init_distributed, shutdown

if __name__ == "__main__":
    torch.set_num_threads(1)
    assert init_distributed(torch.device("cpu"), timeout_s=300)
    stubbed = False
    for run in json.loads(sys.argv[1]):
        if run["stub"] and not stubbed:
            use_stub_detector(setattr)
            stubbed = True
        assert run["stub"] == stubbed, "stub runs come last"
        status = main(run["argv"])
        if status:
            sys.exit(status)
    shutdown()
