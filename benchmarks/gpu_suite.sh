#!/usr/bin/env bash
# One call on a GPU machine without network: build, GPU tests, compute-sanitizer, kernel benchmarks
# and the end-to-end grid, with every log and result under OUTDIR. Budget: ~10 minutes on an H100.
#
#   benchmarks/gpu_suite.sh OUTDIR              # the real suite (needs a CUDA device)
#   benchmarks/gpu_suite.sh --dry-run OUTDIR    # CPU smoke run of the plumbing, tiny sizes
#                                               # (same as DIFFDET_SUITE_CPU=1)
#
# Environment: PYTHON (interpreter, default python), DIFFDET_SUITE_STAGES (comma-separated subset of
# build,env,gpu_tests,sanitizer,kernel_bench,e2e,e2e_swinb; default all).
#
# Every stage runs even when an earlier one failed; OUTDIR/summary.txt lists each stage's status,
# seconds and log, and the script exits 1 when any stage failed (0 otherwise). Each sanitizer tool is
# capped at 100 s (exit 124 in the log means it timed out) to keep the whole suite near 10 minutes.
set -u

usage() { echo "usage: $0 [--dry-run] OUTDIR" >&2; exit 2; }

DRY_RUN="${DIFFDET_SUITE_CPU:-0}"
OUTDIR=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage ;;
        -*) echo "unknown option $arg" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || usage; OUTDIR="$arg" ;;
    esac
done
[ -n "$OUTDIR" ] || usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
STAGES=",${DIFFDET_SUITE_STAGES:-build,env,gpu_tests,sanitizer,kernel_bench,e2e,e2e_swinb},"
mkdir -p "$OUTDIR/logs"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
FAILED=0
cd "$ROOT" || exit 1

# run_stage NAME CMD...: run CMD with its output in logs/NAME.log, record ok/FAILED and the seconds.
run_stage() {
    local name="$1"; shift
    case "$STAGES" in *",$name,"*) ;; *) printf '%-14s skipped (not in DIFFDET_SUITE_STAGES)\n' "$name" >> "$SUMMARY"; return 0 ;; esac
    local log="$OUTDIR/logs/$name.log" start=$SECONDS status
    echo "== $name: $*" | tee "$log"
    "$@" >> "$log" 2>&1
    status=$?
    if [ "$status" -eq 0 ]; then
        printf '%-14s ok      %4ds  logs/%s.log\n' "$name" $((SECONDS - start)) "$name" >> "$SUMMARY"
    else
        FAILED=1
        printf '%-14s FAILED  %4ds  logs/%s.log (exit %d)\n' "$name" $((SECONDS - start)) "$name" "$status" >> "$SUMMARY"
    fi
    tail -n 3 "$log"
}

skip_stage() { printf '%-14s skipped (%s)\n' "$1" "$2" >> "$SUMMARY"; echo "== $1: skipped ($2)"; }

env_stage() {
    "$PY" -m diffdet info --json > "$OUTDIR/info.json" || return 1
    if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUTDIR/nvidia-smi.txt"; fi
    cat "$OUTDIR/info.json"
}

sanitizer_stage() {
    local status=0 tool
    for tool in memcheck racecheck; do
        echo "-- compute-sanitizer --tool $tool"
        timeout 100 compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
            "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests/ops tests/kernels || status=1
    done
    return $status
}

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_suite: dry run on the CPU (tiny sizes); outputs in $OUTDIR"
    skip_stage build "dry run: would run $PY -m pip install --no-build-isolation --no-deps --no-index -e ."
    run_stage env env_stage
    run_stage gpu_tests "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests
    skip_stage sanitizer "dry run: compute-sanitizer memcheck and racecheck on pytest -m gpu tests/ops tests/kernels"
    run_stage kernel_bench "$PY" -m pytest benchmarks --collect-only -q -p no:cacheprovider
    run_stage e2e "$PY" -m diffdet bench model.backbone=R18 model.hidden_dim=32 model.dim_feedforward=64 \
        model.nheads=2 model.num_heads=2 model.dim_dynamic=8 --device cpu --modes fp32 --size 32x48 \
        --boxes 5 --steps 1 --warmup 0 --iters 1 --out "$OUTDIR" --name e2e
    run_stage e2e_swinb "$PY" -m diffdet bench model.backbone=SwinNano model.hidden_dim=32 \
        model.dim_feedforward=64 model.nheads=2 model.num_heads=2 model.dim_dynamic=8 --device cpu \
        --modes fp32 --size 32x48 --boxes 5 --steps 1 --warmup 0 --iters 1 --out "$OUTDIR" --name e2e_swinb
else
    run_stage build "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
    run_stage env env_stage
    run_stage gpu_tests "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUTDIR/gpu_tests.xml" tests
    if command -v compute-sanitizer > /dev/null; then
        run_stage sanitizer sanitizer_stage
    else
        skip_stage sanitizer "compute-sanitizer not found"
    fi
    run_stage kernel_bench "$PY" -m pytest benchmarks --ignore=benchmarks/bench_e2e.py -q -p no:cacheprovider \
        --benchmark-enable --benchmark-json="$OUTDIR/kernel_benchmarks.json"
    run_stage e2e "$PY" -m diffdet bench --modes fp32,bf16,graph --warmup 3 --iters 15 --out "$OUTDIR" --name e2e
    # The paper's strongest model (random weights, same speed): Swin-B at the published points only.
    run_stage e2e_swinb "$PY" -m diffdet bench model.backbone=SwinB-22k --modes fp32,bf16,graph --boxes 300,500 \
        --steps 1,4 --warmup 3 --iters 15 --out "$OUTDIR" --name e2e_swinb
fi

echo "== summary ($SUMMARY)"
cat "$SUMMARY"
exit $FAILED
