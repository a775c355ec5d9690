"""The GPU suite's Python side (``benchmarks/gpu_suite.sh``): the preflight and the result digests.

Runs under the suite's interpreter and imports neither diffdet (which may not be built yet) nor
anything the GPU machine lacks; torch only in ``preflight``.

    python gpu_suite_report.py preflight --mode real|dry --work DIR   # exit 3: a prerequisite is missing
    python gpu_suite_report.py e2e OUT.json RUN.json...             # merge `diffdet bench` runs; print lines
    python gpu_suite_report.py kernels OUT.json DIR                  # merge the kernel benchmark files
    python gpu_suite_report.py junit RESULTS.xml                     # "N passed, N failed, ..."
    python gpu_suite_report.py arch SM                              # exit 1: no code for SM (sm_90)
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PREFLIGHT_FAILED = 3


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd`` (stripped), or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as err:  # a broken install must not stop the preflight from reporting the rest
        return f"missing ({type(err).__name__}: {err})"


def find_nvcc() -> str | None:
    """The nvcc setup.py would use: on PATH, else under CUDA_HOME or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return None


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, else the copy Triton's NVIDIA backend ships (found without importing triton)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(base, "backends", "nvidia", "bin", "cuobjdump")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def extension_arches(root: Path) -> tuple[str | None, list[str]]:
    """The built ``diffdet/_C*.so`` under ``root`` (None if absent) and the sm_XX/compute_XX it holds.

    Read with cuobjdump (SASS as ``sm_XX``, PTX as ``compute_XX``); ``["unknown (no cuobjdump)"]``
    where cuobjdump is missing, ``[]`` for a CPU-only build.
    """
    built = sorted(glob.glob(str(root / "diffdet" / "_C*.so")))
    if not built:
        return None, []
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        return built[0], ["unknown (no cuobjdump)"]
    sass = _run([cuobjdump, "--list-elf", built[0]]) or ""
    ptx = _run([cuobjdump, "--list-ptx", built[0]]) or ""
    arches = sorted(set(re.findall(r"\bsm_\d+a?\b", sass)))
    arches += sorted(f"compute_{v}" for v in set(re.findall(r"\bsm_(\d+a?)\b", ptx)))
    return built[0], arches


def preflight(mode: str, work: Path, root: Path) -> int:
    """Print what the machine has in a few lines; write ``work/preflight.json`` and ``preflight.env``.

    In ``real`` mode a missing prerequisite (torch, a CUDA build of torch, a CUDA device, nvcc)
    fails with exit status 3 and a message saying what is missing.
    """
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable, "mode": mode}
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    problems = []
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    info["nvidia_smi"] = smi.splitlines()[0] if smi else None
    nvcc = find_nvcc()
    nvcc_version = _run([nvcc, "--version"]) if nvcc else None
    info["nvcc"] = f"{nvcc} ({nvcc_version.splitlines()[-1]})" if nvcc_version else nvcc
    try:
        import torch
    except Exception as err:
        torch = None
        problems.append(f"{sys.executable} cannot import torch ({type(err).__name__}: {err})")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["triton"] = _version("triton")
        info["torchvision"] = _version("torchvision")
        info["cuda_available"] = torch.cuda.is_available()
        if torch.version.cuda is None:
            problems.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
        elif not info["cuda_available"]:
            problems.append(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available())")
        else:
            major, minor = torch.cuda.get_device_capability(0)
            info["gpu"] = torch.cuda.get_device_name(0)
            info["capability"] = f"{major}.{minor}"
            info["sm"] = f"sm_{major}{minor}"
            info["torch_arch_list"] = torch.cuda.get_arch_list()
    if nvcc is None:
        problems.append("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): the CUDA ops cannot be built")
    so, arches = extension_arches(root)
    info["extension"] = {"path": so, "device_code": arches}
    info["problems"] = problems

    print(f"machine   {info['nvidia_smi'] or 'no nvidia-smi'}; {info['cores']} cores")
    print(
        f"python    {info['python']} ({sys.executable}); torch {info.get('torch', '-')} "
        f"(CUDA {info.get('torch_cuda') or 'none'}), triton {info.get('triton', '-')}, "
        f"torchvision {info.get('torchvision', '-')}"
    )
    device = info.get("gpu", "none")
    if "sm" in info:
        arches = " ".join(info["torch_arch_list"])
        device += f", capability {info['capability']} ({info['sm']}); torch has {arches}"
    print(f"device    {device}")
    print(f"nvcc      {info['nvcc'] or 'not found'}")
    have = "not built yet" if so is None else (", ".join(arches) or "no device code (CPU-only build)")
    if so is not None and "sm" in info and arches and not arches[0].startswith("unknown"):
        ok = info["sm"] in arches or f"compute_{info['sm'][3:]}" in arches
        have += f" -> {'has' if ok else 'LACKS'} code for {info['sm']}"
    print(f"extension {have}")

    work.mkdir(parents=True, exist_ok=True)
    (work / "preflight.json").write_text(json.dumps(info, indent=1))
    capability = info.get("capability", "")
    (work / "preflight.env").write_text(f"SUITE_CAPABILITY={capability}\nSUITE_CORES={info['cores']}\n")
    if mode == "real" and problems:
        for problem in problems:
            print(f"preflight FAILED: {problem}")
        return PREFLIGHT_FAILED
    for problem in problems:
        print(f"preflight note (dry run, not fatal): {problem}")
    return 0


def _load(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def e2e(out: Path, runs: list[str]) -> int:
    """Merge ``diffdet bench`` JSON files into ``out`` and print one line per grid point."""
    merged: dict = {"runs": [], "records": []}
    for path in runs:
        payload = _load(path)
        if payload is None:
            continue
        meta = payload.get("meta") or {}
        merged["runs"].append({"file": os.path.basename(path), "meta": meta})
        tag = {"backbone": meta.get("backbone"), "size": meta.get("size")}
        merged["records"] += [{**r, **tag} for r in payload.get("records", [])]
    out.write_text(json.dumps(merged, indent=1))
    points: dict[tuple, list[dict]] = {}
    for r in merged["records"]:
        points.setdefault((r["backbone"], r["num_boxes"], r["steps"]), []).append(r)
    for (backbone, p, s), records in points.items():
        parts = []
        for r in records:
            name = r["mode"] if r["backend"] == "fast" else r["backend"]
            ratio = r.get("speedup_vs_published")
            parts.append(f"{name} {r['fps']:.1f}" + (f" ({ratio:.2f}x)" if ratio else ""))
        print(f"  {backbone} {p}x{s} FPS: " + ", ".join(parts))
    return 0


def kernels(out: Path, folder: Path) -> int:
    """Merge the kernel benchmarks' result files (benchmarks/conftest.py) into ``out``; print a count."""
    merged = {name.stem: _load(str(name)) for name in sorted(folder.glob("bench_*.json"))}
    out.write_text(json.dumps(merged, indent=1))
    rows = sum(len((v or {}).get("records", [])) for v in merged.values())
    print(f"{rows} rows from {len(merged)} benchmark files")
    return 0


def junit(path: Path) -> int:
    """Print the counts of a pytest JUnit XML file: passed, failed, errors, skipped."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        print("no results")
        return 0
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed, errors, skipped = counts["failures"], counts["errors"], counts["skipped"]
    print(f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped")
    return 0


def arch(sm: str, root: Path) -> int:
    """Print the device code of the built extension; exit 1 when it has none for ``sm`` (e.g. sm_90)."""
    so, arches = extension_arches(root)
    if so is None:
        print(f"no diffdet/_C*.so under {root}")
        return 1
    print(f"{os.path.basename(so)}: {' '.join(arches) or 'no device code (CPU-only build)'}")
    if arches and arches[0].startswith("unknown"):
        return 0
    return 0 if sm in arches or f"compute_{sm[3:]}" in arches else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preflight")
    p.add_argument("--mode", choices=("real", "dry"), required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p = sub.add_parser("e2e")
    p.add_argument("out", type=Path)
    p.add_argument("runs", nargs="*")
    p = sub.add_parser("kernels")
    p.add_argument("out", type=Path)
    p.add_argument("folder", type=Path)
    p = sub.add_parser("junit")
    p.add_argument("path", type=Path)
    p = sub.add_parser("arch")
    p.add_argument("sm")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    if args.command == "preflight":
        return preflight(args.mode, args.work, args.root)
    if args.command == "e2e":
        return e2e(args.out, args.runs)
    if args.command == "kernels":
        return kernels(args.out, args.folder)
    if args.command == "arch":
        return arch(args.sm, args.root)
    return junit(args.path)


if __name__ == "__main__":
    sys.exit(main())
