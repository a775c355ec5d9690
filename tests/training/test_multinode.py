"""Multi-machine training, rehearsed on one machine over gloo and the loopback.

Two torchrun "nodes" (c10d rendezvous) train the shrunk quickstart detector to the same weights as
two srun-like tasks on one node (SLURM's variables, no torchrun); SIGKILLing one node stops the other
with a one-line error and leaves a loadable checkpoint, which the srun-like pair resumes exactly; a
resume with another number of processes and a rendezvous that never completes stop with one line.

Every launch is a subprocess with a bounded wait; the runs are shared between tests (module fixtures)
to keep the file cheap: each process mostly pays its imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffdet import train
from diffdet.engine import distributed as du
from diffdet.engine.state import last_checkpoint, read_checkpoint

TIMEOUT_S = 20  # train.dist_timeout of the runs: how long a survivor may wait for a dead peer
WAIT_S = 240  # the most any launch may take on a loaded 2-core machine (imports dominate)
SHRINK = [
    "data.min_size_train=[32]",
    "data.max_size_train=48",
    "model.num_proposals=8",
    "model.hidden_dim=32",
    "model.dim_feedforward=64",
    "model.nheads=2",
    "model.num_heads=1",
    "model.dim_dynamic=8",
    "solver.ims_per_batch=4",  # global: 2 images on each of the 2 processes
    "train.checkpoint_period=2",
    "train.log_period=1",
    f"train.dist_timeout={TIMEOUT_S}",
]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any launcher's variables, one thread, gloo on the loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARIABLES and not k.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        **extra,
    }


def _train_args(data: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    return [
        "-m", "diffdet.train", "--config", "quickstart", "--output-dir", str(output_dir),
        f"data.train_images={data['train_images']}", f"data.train_annotations={data['train_annotations']}",
        *SHRINK, *extra,
    ]  # fmt: skip


def _launch(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def _srun_like(data: dict[str, Path], output_dir: Path, *extra: str) -> None:
    """Two processes of one node launched as ``srun --ntasks 2`` would, to the end of the run."""
    port, logs = str(_free_port()), [output_dir.parent / f"{output_dir.name}.task{t}.log" for t in range(2)]
    procs = []
    for task in range(2):
        slurm = {"SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NTASKS": "2"}
        env = _env(**slurm, SLURM_NODELIST="localhost", MASTER_PORT=port)
        procs.append(_launch(_train_args(data, output_dir, *extra), logs[task], env))
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]


def _torchrun_node(data: dict[str, Path], output_dir: Path, node: int, port: int, log: Path, *extra: str):
    """One "machine" of a two-node ``torchrun`` (c10d rendezvous on the loopback; node 0 hosts it)."""
    launcher = [
        "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multinode",
        "--rdzv-conf", f"is_host={node == 0},join_timeout={WAIT_S}",
    ]  # fmt: skip
    return _launch([*launcher, *_train_args(data, output_dir, *extra)], log, _env())


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and all its descendants at once (torchrun starts its workers in new sessions,
    so a process group would miss them)."""
    if proc.poll() is not None:
        return
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # the process ended meanwhile
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(stat.parent.name)
            )
    tree, todo = [], [proc.pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict:
    """The shared runs: an srun-like reference to iteration 6; a two-node torchrun run SIGKILLed on
    one node after its first checkpoint (the survivor's exit status, log and seconds to stop); and
    that run resumed by an srun-like pair to iteration 6."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("killing a node's process tree reads /proc")
    root = tmp_path_factory.mktemp("multinode")
    _srun_like(tiny_data, root / "reference", "solver.max_iter=6")

    killed = root / "two_nodes"
    port, logs = _free_port(), [root / f"node{node}.log" for node in range(2)]
    nodes = [_torchrun_node(tiny_data, killed, n, port, logs[n], "solver.max_iter=1000") for n in range(2)]
    try:
        deadline = time.monotonic() + WAIT_S
        while last_checkpoint(killed) is None and time.monotonic() < deadline and nodes[0].poll() is None:
            time.sleep(0.05)
        _kill_tree(nodes[1])  # node 1 dies: its agent and its worker at once
        killed_at = time.monotonic()
        status = nodes[0].wait(timeout=TIMEOUT_S + 60)  # its worker stops at once, then its agent
        stopped_after = time.monotonic() - killed_at
    finally:
        for node in nodes:  # nothing outlives the test, even when it fails
            _kill_tree(node)
    survivor = {"status": status, "log": logs[0].read_text(), "seconds": stopped_after}
    assert last_checkpoint(killed) is not None, survivor["log"][-3000:]
    checkpoint = read_checkpoint(last_checkpoint(killed))  # before the resume below adds more

    _srun_like(tiny_data, killed, "solver.max_iter=6", "--resume")
    return {"root": root, "survivor": survivor, "checkpoint": checkpoint, "killed": killed}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_two_nodes_train_the_weights_of_one_node_with_two_processes(runs):
    reference = read_checkpoint(runs["root"] / "reference" / "model_0000002.pth")
    two_nodes = read_checkpoint(runs["killed"] / "model_0000002.pth")
    assert reference["data"]["world_size"] == two_nodes["data"]["world_size"] == 2
    assert len(two_nodes["rng"]) == 2  # both processes' random states, written by rank 0 alone
    _assert_same_weights(reference["model"], two_nodes["model"])
    final = read_checkpoint(runs["root"] / "reference" / "model_final.pth")["model"]
    assert any(not torch.equal(value, final[name]) for name, value in reference["model"].items())


def test_rank_0_alone_writes_the_log_the_config_and_the_checkpoints(runs):
    folder = runs["root"] / "reference"
    written = {"config.yaml", "metrics.jsonl", "last_checkpoint", "model_0000002.pth", "model_0000004.pth"}
    assert {p.name for p in folder.iterdir()} == {*written, "model_final.pth"}
    logged = [json.loads(line)["iter"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # one line per iteration: a second writer would double them


def test_a_killed_node_stops_the_other_with_one_line_and_a_loadable_checkpoint(runs):
    survivor = runs["survivor"]
    assert survivor["status"] != 0
    assert survivor["seconds"] < TIMEOUT_S + 30, survivor  # no hang: the worker stops at once
    errors = [line for line in survivor["log"].splitlines() if "error: rank " in line]
    assert len(errors) == 1, survivor["log"][-3000:]
    assert "of 2: a collective failed" in errors[0] and f"train.dist_timeout={TIMEOUT_S} s" in errors[0]
    assert runs["checkpoint"]["iteration"] >= 2 and runs["checkpoint"]["iteration"] % 2 == 0


def test_resume_on_the_same_number_of_processes_continues_exactly(runs):
    straight = read_checkpoint(runs["root"] / "reference" / "model_final.pth")
    resumed = read_checkpoint(runs["killed"] / "model_final.pth")
    assert runs["checkpoint"]["iteration"] < resumed["iteration"] == straight["iteration"] == 6
    _assert_same_weights(straight["model"], resumed["model"])
    for rank in range(2):
        assert torch.equal(straight["rng"][rank]["torch"], resumed["rng"][rank]["torch"])


def test_resume_on_another_number_of_processes_stops_with_one_line(runs, tiny_data, monkeypatch, capsys):
    for name in (*LAUNCH_VARIABLES, "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)  # one process, whatever launched pytest
    status = train.main(_train_args(tiny_data, runs["killed"], "--resume")[2:])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "written by 2 processes and this run has 1" in err[0], err


def test_a_rendezvous_that_never_completes_stops_with_one_line(tiny_data, tmp_path):
    """Task 0 of 2 alone: it waits train.dist_timeout for the other, then stops."""
    env = _env(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS="2", SLURM_NODELIST="localhost",
               MASTER_PORT=str(_free_port()))  # fmt: skip
    args = [sys.executable, *_train_args(tiny_data, tmp_path, "--dist-timeout", "1")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr[-3000:]
    assert "error: rank 0 of 2: the process group at localhost:" in err[0] and (
        "did not form within train.dist_timeout=1 s" in err[0]
    )


def test_srun_variables_become_torchrun_variables():
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "123456",
             "SLURM_NODELIST": "gpu[007-010,012],cpu1"}  # fmt: skip
    assert du.slurm_launch_env(slurm) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu007",
        "MASTER_PORT": str(10000 + 123456 % 20000),
    }
    # the step's own task count and nodes win; a MASTER_ADDR/PORT given by the user stays
    step = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "n[1-2]-ib[5-6]", "MASTER_PORT": "29400"}
    env = du.slurm_launch_env({**slurm, **step})
    assert (env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("4", "n1-ib5", "29400")
    # torchrun's variables (or no SLURM task) leave everything alone
    assert du.slurm_launch_env({**slurm, "RANK": "0"}) == {}
    assert du.slurm_launch_env({"SLURM_NTASKS": "8", "SLURM_NODELIST": "a1"}) == {}
    environ = dict(slurm)
    assert du.launch_from_env(environ)["RANK"] == environ["RANK"] == "5"


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node1", "node1"), ("a-1,a-2", "a-1"), ("gpu[03-04,07],cpu1", "gpu03"), ("x[9,1]", "x9")],
)
def test_first_slurm_host(nodelist, first):
    assert du.first_slurm_host(nodelist) == first


def _doc_commands() -> list[list[str]]:
    """The shell commands of docs/multinode.md's bash blocks, continuation lines joined."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "multinode.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", doc, flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_the_documented_commands_parse_into_valid_configs():
    from torch.distributed.run import get_args_parser

    commands = _doc_commands()
    assert {argv[0] for argv in commands} == {"torchrun", "srun"}
    for argv in commands:
        processes = None
        if argv[0] == "torchrun":
            launch = get_args_parser().parse_args(argv[1:])
            assert launch.module and launch.training_script == "diffdet.train", argv
            args, processes = launch.training_script_args, int(launch.nnodes) * int(launch.nproc_per_node)
        else:
            args = argv[argv.index("diffdet.train") + 1 :]
        parser = argparse.ArgumentParser()
        train.add_arguments(parser)
        cfg = train.config_from_args(parser.parse_args(args))
        if processes is not None:
            assert cfg.solver.ims_per_batch % (processes * cfg.solver.grad_accum) == 0, argv


def test_backend_failures_become_one_line_and_other_errors_pass(monkeypatch):
    """What gloo raises when a peer stops answering (the killed-node run covers a closed connection)."""
    monkeypatch.setattr(du, "is_distributed", lambda: True)
    monkeypatch.setattr(du, "get_rank", lambda: 3)
    monkeypatch.setattr(du, "get_world_size", lambda: 4)
    silent = RuntimeError(
        "[/src/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv "
        "operation to complete"
    )
    with pytest.raises(du.DistributedError) as caught, du.peer_failures_as_errors(5.0):
        raise silent
    assert str(caught.value) == (
        "rank 3 of 4: a collective failed (Timed out waiting 5000ms for recv operation to complete): "
        "another process died or did not answer within train.dist_timeout=5 s; stopping"
    )
    with pytest.raises(RuntimeError, match="shape mismatch"), du.peer_failures_as_errors(5.0):
        raise RuntimeError("shape mismatch")  # a bug keeps its traceback


def test_resume_from_unshared_output_folders_stops_with_one_line(tiny_data, tmp_path, monkeypatch):
    """Rank 1 finds no checkpoint where rank 0 finds one: the output folder is not shared."""
    from trainkit import ToyDetector, tiny_config

    from diffdet.engine.state import ResumeMismatchError
    from diffdet.engine.trainer import Trainer

    cfg, _ = tiny_config(tiny_data, tmp_path)
    train_set, _ = train.build_datasets(cfg)
    Trainer(cfg, ToyDetector(), train_set, torch.device("cpu")).save()
    monkeypatch.setattr(du, "all_gather_objects", lambda name: [name, None])
    trainer = Trainer(cfg, ToyDetector(), train_set, torch.device("cpu"))
    with pytest.raises(ResumeMismatchError) as caught:
        trainer.resume()
    assert str(caught.value) == (
        f"cannot resume: in {tmp_path} rank 0 finds checkpoint model_0000000.pth but rank 1 finds none; "
        "train.output_dir must be one folder shared by every machine"
    )


@pytest.mark.parametrize(("visible", "local_rank", "index"), [(8, 3, 3), (1, 3, 0), (2, 3, None)])
def test_the_gpu_comes_from_the_local_rank(monkeypatch, visible, local_rank, index):
    """cuda:LOCAL_RANK when the machine's GPUs are all visible; cuda:0 when the launcher shows each
    process its own (``srun --gpus-per-task=1``); an error when there are too few."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    if index is None:
        with pytest.raises(du.DistributedError, match="LOCAL_RANK=3 but this machine shows only 2 CUDA"):
            du.resolve_device("cuda")
    else:
        assert du.resolve_device("auto") == torch.device("cuda", index)
