#!/usr/bin/env bash
# diffdet's GPU suite: one call on a GPU machine without network, under 8 minutes, most valuable first.
#
#   bash benchmarks/gpu_suite.sh OUTDIR              # the real suite: needs a CUDA device, nvcc, torch+CUDA
#   bash benchmarks/gpu_suite.sh --dry-run OUTDIR    # the same stages, caps and outputs; CPU, tiny sizes
#   bash benchmarks/gpu_suite.sh --rehearse OUTDIR   # a venv like the GPU machine's (torch 2.11, triton 3.6,
#                                                    # torchvision 0.26, no pycocotools), diffdet built in a
#                                                    # copy of the tree, then the dry run and the CPU tests
#
# From a session lent a GPU machine (the device tool): one `run`, timeout_s 600, command
#   DIFFDET_COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_suite.sh $OUT/suite
# The tool copies the working tree (no .git, no ignored files) and the build happens there, for that card
# only. Commit the files that come back (files_at/suite/*) under benchmarks/results/gpu-<card>/, e.g.
# benchmarks/results/gpu-h200/ (docs/gpu-suite.md).
#
# Stages, in order of value; each runs under its own time cap (DIFFDET_SUITE_CAP_<STAGE>=seconds) and
# none starts when less than DIFFDET_SUITE_MIN_START (20 s) of the overall budget DIFFDET_SUITE_BUDGET
# (460 s) is left, so a run cut short still holds the most important results:
#   preflight     GPU, driver, python/torch/triton/torchvision, capability, nvcc, extension's device code;
#                 stops the suite within seconds (exit 3) when a CUDA device, torch+CUDA or nvcc is missing
#   build         pip install --no-build-isolation --no-deps --no-index -e . with TORCH_CUDA_ARCH_LIST =
#                 the card's capability and MAX_JOBS = cores; then the device code for that capability
#   headline      diffdet bench, R50 at 800x1333, batch 1, 300 boxes x 1 step and 500 x 4: fp32, bf16 and
#                 CUDA-graph bf16 beside the published ops (torchvision's) in the same run
#   gpu_tests     pytest -m gpu tests
#   kernel_bench  benchmarks/bench_<op>.py (pytest-benchmark): RoIAlign and NMS against torchvision, then the
#                 Triton kernels against the references (not torch.compile: DIFFDET_SUITE_KERNEL_K)
#   memcheck      compute-sanitizer memcheck over pytest -m gpu tests/ops, then tests/kernels
#   grid          diffdet bench over more boxes and steps (R50; Swin-B too when model.backbone=SwinB exists)
#   racecheck     compute-sanitizer racecheck over pytest -m gpu tests/ops, if time is left
#   onnx_gpu      diffdet bench --runtimes eager,onnxruntime: R50 300 boxes x 1 step exported to ONNX and run
#                 by ONNX Runtime's TensorRT or CUDA provider beside eager fp32; skipped (one line) where
#                 onnxruntime or its GPU providers are missing (the dry run: ONNX Runtime on the CPU)
#
# OUTDIR is written after every stage and stays flat, at most 8 files (what the device tool returns):
# summary.txt (one screen), suite.json (preflight and every stage), logs.txt (each stage's log tail),
# headline.json, gpu_tests.xml, kernel_bench.json, grid.json, onnx_gpu.json. Full logs stay in a scratch folder.
#
# Environment: PYTHON (default python3), DIFFDET_SUITE_STAGES (comma-separated subset), DIFFDET_SUITE_BUDGET,
# DIFFDET_SUITE_MIN_START, DIFFDET_SUITE_CAP_<STAGE>, DIFFDET_SUITE_BUILD=1 (dry run: build too, CPU-only
# unless DIFFDET_CUDA=1), DIFFDET_COMMIT (recorded; default git rev-parse HEAD), DIFFDET_SUITE_FAKE_SLOW=
# stage:seconds[,...] (tests: that stage sleeps first, inside its cap), DIFFDET_SUITE_KERNEL_K (pytest -k of
# kernel_bench), DIFFDET_SUITE_KEEP_WORK=1 (keep the scratch folder's full logs), TORCH_CUDA_ARCH_LIST,
# MAX_JOBS.
# Rehearsal: DIFFDET_REHEARSE_VENV (default .rehearse-venv, reused when complete), DIFFDET_REHEARSE_PYTHON
# (default python3.12, else python3.11), DIFFDET_REHEARSE_TESTS (default tests).
# Exit status: 0 every stage ok or skipped, 1 a stage failed or timed out, 2 usage, 3 preflight failed.
set -u

usage() { echo "usage: $0 [--dry-run | --rehearse] OUTDIR" >&2; exit 2; }

MODE=real
[ "${DIFFDET_SUITE_CPU:-0}" = 1 ] && MODE=dry
OUTDIR=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry ;;
        --rehearse) MODE=rehearse ;;
        -h|--help) usage ;;
        -*) echo "unknown option $arg" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || usage; OUTDIR="$arg" ;;
    esac
done
[ -n "$OUTDIR" ] || usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT" || exit 2

if [ "$MODE" = rehearse ]; then
    # shellcheck source=benchmarks/gpu_suite_rehearse.sh
    . "$ROOT/benchmarks/gpu_suite_rehearse.sh"
    rehearse "$OUTDIR"
    exit $?
fi

export PY="${PYTHON:-python3}" ROOT OUTDIR MODE PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# On the GPU the compiled kernels must run: no Triton interpreter, no forced reference backend.
[ "$MODE" = real ] && unset TRITON_INTERPRET DIFFDET_BACKEND
export REPORT="$ROOT/benchmarks/gpu_suite_report.py"
export WORK
WORK="$(mktemp -d "${TMPDIR:-/tmp}/diffdet-suite.XXXXXX")"
# The full logs go with the scratch folder (logs.txt keeps their tails) unless DIFFDET_SUITE_KEEP_WORK=1.
[ "${DIFFDET_SUITE_KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
BUDGET="${DIFFDET_SUITE_BUDGET:-460}"
MIN_START="${DIFFDET_SUITE_MIN_START:-20}"
KILL_GRACE=10  # after its cap a stage gets SIGINT (pytest still writes its results), then SIGKILL
STAGES_WANTED=",${DIFFDET_SUITE_STAGES:-all},"
COMMIT="${DIFFDET_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
T0=$SECONDS
OUTPUTS=(summary.txt suite.json logs.txt headline.json gpu_tests.xml kernel_bench.json grid.json onnx_gpu.json)
for f in "${OUTPUTS[@]}"; do rm -f "${OUTDIR:?}/$f"; done

# Stage table, in order of value: name, cap in seconds on the GPU machine.
STAGE_NAMES=(build headline gpu_tests kernel_bench memcheck grid racecheck onnx_gpu)
declare -A CAP=([build]=240 [headline]=150 [gpu_tests]=120 [kernel_bench]=100 [memcheck]=90 [grid]=150
                [racecheck]=60 [onnx_gpu]=180)
declare -A STATUS SECS NOTE EFFCAP
for s in "${STAGE_NAMES[@]}"; do
    STATUS[$s]=pending; SECS[$s]=0; NOTE[$s]=""; EFFCAP[$s]=0
    override="DIFFDET_SUITE_CAP_${s^^}"
    [ -n "${!override:-}" ] && CAP[$s]="${!override}"
done
PREFLIGHT_STATUS=pending

# ---------------------------------------------------------------------------------------------- outputs
json_str() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"; s="${s//$'\t'/ }"; s="${s//$'\n'/ | }"
    printf '"%s"' "$s"
}

write_outputs() {
    local s i=0 sep=""
    {
        echo "diffdet GPU suite ($MODE), started $STARTED, commit $COMMIT," \
            "$((SECONDS - T0))s of ${BUDGET}s budget"
        [ -s "$WORK/preflight.txt" ] && sed 's/^/  /' "$WORK/preflight.txt" | head -n 8
        printf '%-16s %-9s %6s %6s  %s\n' stage status time cap note
        printf '%-16s %-9s\n' "0 preflight" "$PREFLIGHT_STATUS"
        for s in "${STAGE_NAMES[@]}"; do
            i=$((i + 1))
            printf '%-16s %-9s %5ss %5ss  %s\n' "$i $s" "${STATUS[$s]}" "${SECS[$s]}" "${EFFCAP[$s]}" \
                "${NOTE[$s]:0:100}"
        done
        if [ -s "$WORK/headline.lines" ]; then
            echo "headline (images/s, median; x published ops):"; head -n 6 "$WORK/headline.lines"
        fi
        echo "files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
    } > "$OUTDIR/summary.txt"
    {
        printf '{"mode": %s, "commit": %s, "started_utc": %s, "budget_s": %s, "elapsed_s": %s,\n' \
            "$(json_str "$MODE")" "$(json_str "$COMMIT")" "$(json_str "$STARTED")" "$BUDGET" \
            "$((SECONDS - T0))"
        printf ' "preflight_status": %s, "preflight": ' "$(json_str "$PREFLIGHT_STATUS")"
        if [ -s "$WORK/preflight.json" ]; then cat "$WORK/preflight.json"; else printf 'null'; fi
        printf ',\n "stages": ['
        for s in "${STAGE_NAMES[@]}"; do
            printf '%s\n  {"name": %s, "status": %s, "seconds": %s, "cap_s": %s, "note": %s}' "$sep" \
                "$(json_str "$s")" "$(json_str "${STATUS[$s]}")" "${SECS[$s]}" "${EFFCAP[$s]}" \
                "$(json_str "${NOTE[$s]}")"
            sep=","
        done
        printf '\n ]}\n'
    } > "$OUTDIR/suite.json"
    {
        for s in preflight "${STAGE_NAMES[@]}"; do
            [ -f "$WORK/$s.log" ] || continue
            echo "===== $s: ${STATUS[$s]:-$PREFLIGHT_STATUS}; last 300 lines of $(wc -l < "$WORK/$s.log")"
            tail -n 300 "$WORK/$s.log" | cut -c1-400 | tail -c 98304
        done
    } > "$OUTDIR/logs.txt"
}

# ---------------------------------------------------------------------------------------------- stages
# Each stage runs in `bash -c` under `timeout` (so it needs the functions and variables exported); it
# returns 0 (ok), 77 (skipped: the reason is its note) or anything else (FAILED); it may write a
# one-line note to $WORK/<stage>.note for the summary.
note() { echo "$*" > "$WORK/$STAGE.note"; }

# The dry run's model: a narrow head (R18 unless a backbone is named), on the CPU, one timed call per point.
BENCH_TINY="model.hidden_dim=32 model.dim_feedforward=64 model.nheads=2 model.num_heads=2 model.dim_dynamic=8
            --device cpu --warmup 0 --iters 1"
export BENCH_TINY

stage_build() {
    local so
    if [ "$MODE" = dry ] && [ "${DIFFDET_SUITE_BUILD:-0}" != 1 ]; then
        note "dry run: not built (DIFFDET_SUITE_BUILD=1 builds)"; return 77
    fi
    if [ "$MODE" = real ]; then
        export DIFFDET_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$SUITE_CAPABILITY}"
    else
        export DIFFDET_CUDA="${DIFFDET_CUDA:-0}"
    fi
    export MAX_JOBS="${MAX_JOBS:-$SUITE_CORES}"
    echo "DIFFDET_CUDA=$DIFFDET_CUDA TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS"
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . || return 1
    "$PY" -m diffdet info || return 1
    so="$(ls diffdet/_C*.so 2> /dev/null | head -n 1)"
    [ -n "$so" ] || { note "no diffdet/_C*.so after the build"; return 1; }
    if [ "$MODE" = real ]; then
        local want="sm_${SUITE_CAPABILITY/./}" found rc
        found="$("$PY" "$REPORT" arch "$want")"
        rc=$?
        echo "$found"
        if [ $rc = 0 ]; then note "device code: $found"; else note "NO $want code: $found"; fi
        return $rc
    else
        note "built CPU-only (DIFFDET_CUDA=$DIFFDET_CUDA)"
    fi
}

# merge_bench NAME: the `diffdet bench` files under WORK/NAME into OUTDIR/NAME.json, a line per point
# into WORK/NAME.lines.
merge_bench() { "$PY" "$REPORT" e2e "$OUTDIR/$1.json" "$WORK/$1"/*.json > "$WORK/$1.lines"; }

# bench_points NAME "P S" ...: one `diffdet bench` per point (a cut run keeps the finished points),
# merged after each. Extra bench args in BENCH_ARGS.
bench_points() {
    local name="$1" point boxes steps status=0
    shift
    for point in "$@"; do
        read -r boxes steps <<< "$point"
        "$PY" -m diffdet bench "${BENCH_ARGS[@]}" --boxes "$boxes" --steps "$steps" --out "$WORK/$name" \
            --name "$name-${boxes//,/_}x${steps//,/_}" || status=1
        merge_bench "$name"
    done
    return $status
}

stage_headline() {
    if [ "$MODE" = dry ]; then
        BENCH_ARGS=(model.backbone=R18 $BENCH_TINY --modes fp32,bf16 --baselines published --size 32x48)
        bench_points headline "5 1" "7 2"
    else
        BENCH_ARGS=(--device cuda --modes fp32,bf16,graph-bf16 --baselines published --size 800x1333
                    --batch 1 --warmup 3 --iters 20)
        bench_points headline "300 1" "500 4"
    fi
}

stage_gpu_tests() {
    local paths=(tests) status
    [ "$MODE" = dry ] && paths=(tests/ops)  # every gpu test skips on the CPU: the plumbing only
    "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUTDIR/gpu_tests.xml" "${paths[@]}"
}

stage_kernel_bench() {
    local files=(benchmarks/bench_roi_align_multilevel.py benchmarks/bench_batched_nms.py
                 benchmarks/bench_dynamic_conv.py benchmarks/bench_ddim_renewal_step.py
                 benchmarks/bench_head.py)
    mkdir -p "$WORK/kernels"
    if [ "$MODE" = dry ]; then  # the CPU shapes take minutes: collect one file
        "$PY" -m pytest --collect-only -q -p no:cacheprovider "${files[1]}" || return 1
        note "dry run: ${files[1]} collected only"; return 0
    fi
    # In this order (pytest keeps it), so a cut run holds the ops against torchvision first. torch.compile
    # recompiles for every shape and dtype (minutes): left out unless DIFFDET_SUITE_KERNEL_K says otherwise.
    DIFFDET_BENCH_RESULTS="$WORK/kernels" "$PY" -m pytest -q -p no:cacheprovider --benchmark-enable \
        -k "${DIFFDET_SUITE_KERNEL_K:-not torch_compile}" "${files[@]}"
}

# sanitize TOOL PATH...: compute-sanitizer TOOL over `pytest -m gpu` of each PATH in turn.
sanitize() {
    local tool="$1" path status=0
    shift
    if [ "$MODE" = dry ]; then note "dry run: no GPU"; return 77; fi
    if ! command -v compute-sanitizer > /dev/null; then note "compute-sanitizer not found"; return 77; fi
    for path in "$@"; do
        echo "-- compute-sanitizer --tool $tool: pytest -m gpu $path"
        compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all --print-limit 20 \
            "$PY" -m pytest -m gpu -q -p no:cacheprovider "$path" || status=1
    done
    return $status
}

stage_memcheck() { sanitize memcheck tests/ops tests/kernels; }
stage_racecheck() { sanitize racecheck tests/ops; }

stage_grid() {
    local status=0 swin backbone=SwinB resnet=R50
    if [ "$MODE" = dry ]; then
        backbone=SwinNano resnet=R18  # small models: the same code paths in seconds
        BENCH_ARGS=(model.backbone=R18 $BENCH_TINY --modes fp32 --baselines published --size 32x48)
        bench_points grid "3 1,2" || status=1
        swin=($BENCH_TINY --modes fp32 --baselines published --size 64x96 --boxes 3 --steps 1)
    else
        BENCH_ARGS=(--device cuda --modes fp32,bf16,graph,graph-bf16 --baselines published --size 800x1333
                    --warmup 2 --iters 10)
        bench_points grid "100 1,2,4,8" "1000 1,2,4,8" "2000 1,2,4,8" "300 2,8" "500 1,2,8" || status=1
        swin=(--device cuda --modes fp32,bf16,graph-bf16 --baselines published --size 800x1333 --warmup 2
              --iters 10 --boxes 300,500 --steps 1,4)
    fi
    # Swin only where the config knows it: an unknown backbone fails with "..., got 'SwinB'".
    "$PY" -m diffdet bench "model.backbone=$backbone" "${swin[@]}" --out "$WORK/grid" \
        --name "grid-$backbone" 2> "$WORK/swin.err"
    case $? in
        0) note "$resnet grid and $backbone" ;;
        2) if grep -q "got '$backbone'" "$WORK/swin.err"; then
               note "$resnet grid; no $backbone (model.backbone=$backbone unknown)"
           else
               status=1
           fi ;;
        *) status=1 ;;
    esac
    cat "$WORK/swin.err"
    return $status
}

# The exported graph in ONNX Runtime beside eager PyTorch (diffdet bench --runtimes): on the GPU through
# its TensorRT or CUDA provider, skipped with one line where neither is present; the dry run uses the CPU.
stage_onnx_gpu() {
    local providers point="300 1"
    providers="$("$PY" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))' 2> /dev/null)" \
        || { note "onnxruntime not installed (pip install diffdet[export])"; return 77; }
    if [ "$MODE" = dry ]; then
        BENCH_ARGS=(model.backbone=R18 $BENCH_TINY --modes fp32 --baselines published --size 32x48)
        point="5 1"
    else
        case ",$providers," in
            *,TensorrtExecutionProvider,*|*,CUDAExecutionProvider,*) ;;
            *) note "onnxruntime has no CUDA or TensorRT provider ($providers)"; return 77 ;;
        esac
        BENCH_ARGS=(--device cuda --modes fp32 --baselines published --size 800x1333 --warmup 3 --iters 20)
    fi
    BENCH_ARGS+=(--runtimes eager,onnxruntime)
    note "providers: $providers"
    bench_points onnx_gpu "$point"
}

export -f note stage_build merge_bench bench_points stage_headline stage_gpu_tests stage_kernel_bench \
    sanitize stage_memcheck stage_racecheck stage_grid stage_onnx_gpu

# collect_STAGE: run after the stage, even one cut at its cap, to gather what it wrote into OUTDIR;
# prints a note for the summary.
collect_headline() { merge_bench headline; echo "$(wc -l < "$WORK/headline.lines") points"; }
collect_grid() { merge_bench grid; echo "$(wc -l < "$WORK/grid.lines") points"; }
collect_onnx_gpu() { merge_bench onnx_gpu; head -n 1 "$WORK/onnx_gpu.lines"; }
collect_gpu_tests() { "$PY" "$REPORT" junit "$OUTDIR/gpu_tests.xml"; }
collect_kernel_bench() { "$PY" "$REPORT" kernels "$OUTDIR/kernel_bench.json" "$WORK/kernels"; }
collect_sanitizer() {
    grep -h "ERROR SUMMARY" "$WORK/$1.log" | sed 's/=* *//' | tr '\n' ' '
    grep -q "ERROR SUMMARY" "$WORK/$1.log" || echo "no ERROR SUMMARY line"
}
collect_memcheck() { collect_sanitizer memcheck; }
collect_racecheck() { collect_sanitizer racecheck; }
export -f collect_headline collect_grid collect_onnx_gpu collect_gpu_tests collect_kernel_bench collect_sanitizer \
    collect_memcheck collect_racecheck

fake_delay() {  # seconds DIFFDET_SUITE_FAKE_SLOW asks stage $1 to sleep first (0: none)
    local item fake="${DIFFDET_SUITE_FAKE_SLOW:-}"
    for item in ${fake//,/ }; do
        [ "${item%%:*}" = "$1" ] && { echo "${item#*:}"; return; }
    done
    echo 0
}

run_stage() {
    local name="$1" left cap rc start
    case "$STAGES_WANTED" in
        *",all,"*|*",$name,"*) ;;
        *) STATUS[$name]=skipped; NOTE[$name]="not in DIFFDET_SUITE_STAGES"; write_outputs; return ;;
    esac
    left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt "$MIN_START" ]; then
        STATUS[$name]=skipped; NOTE[$name]="over budget (${left}s left, ${MIN_START}s needed)"
        echo "== $name: skipped, over budget"; write_outputs; return
    fi
    cap=${CAP[$name]}
    [ "$cap" -gt "$left" ] && cap=$left
    EFFCAP[$name]=$cap
    STATUS[$name]=running; write_outputs
    echo "== [$((SECONDS - T0))s] $name (cap ${cap}s)"
    start=$SECONDS
    rm -f "$WORK/$name.note" "$WORK/$name.collected"
    # timeout signals the whole process group; the trap ends the stage once its current command has
    # handled SIGINT (e.g. pytest writing its results), instead of going on to the next command.
    STAGE="$name" timeout -s INT -k "$KILL_GRACE" "$cap" bash -c \
        'trap "exit 130" INT; if [ "$1" != 0 ]; then sleep "$1"; fi; "stage_$STAGE"' _ \
        "$(fake_delay "$name")" > "$WORK/$name.log" 2>&1
    rc=$?
    SECS[$name]=$((SECONDS - start))
    if declare -F "collect_$name" > /dev/null && [ "$rc" != 77 ]; then
        STAGE="$name" timeout -k 5 60 bash -c "collect_$name" > "$WORK/$name.collected" 2>> "$WORK/$name.log"
    fi
    NOTE[$name]="$(cat "$WORK/$name.note" "$WORK/$name.collected" 2> /dev/null | tr '\n' ' ' \
                   | head -c 300 | sed 's/ *$//')"
    case $rc in
        0) STATUS[$name]=ok ;;
        77) STATUS[$name]=skipped ;;
        124|137) STATUS[$name]=timeout; FAILED=1; NOTE[$name]="cut at its ${cap}s cap. ${NOTE[$name]}" ;;
        *) STATUS[$name]=FAILED; FAILED=1; NOTE[$name]="exit $rc. ${NOTE[$name]}" ;;
    esac
    write_outputs
    echo "== $name: ${STATUS[$name]} in ${SECS[$name]}s ${NOTE[$name]}"
    tail -n 3 "$WORK/$name.log"
}

# ---------------------------------------------------------------------------------------------- main
export STAGE=preflight SUITE_CAPABILITY="" SUITE_CORES=1
FAILED=0
echo "gpu_suite ($MODE): outputs in $OUTDIR, logs in $WORK"
pf_mode=real; [ "$MODE" = dry ] && pf_mode=dry
timeout -k 5 60 "$PY" "$REPORT" preflight --mode "$pf_mode" --work "$WORK" > "$WORK/preflight.log" 2>&1
rc=$?
grep -v '^Traceback\|^  ' "$WORK/preflight.log" | head -n 12 > "$WORK/preflight.txt"
cat "$WORK/preflight.log"
if [ $rc -ne 0 ]; then
    PREFLIGHT_STATUS=FAILED
    [ $rc = 3 ] || echo "preflight FAILED: $PY could not run $REPORT (exit $rc)" \
        | tee -a "$WORK/preflight.txt"
    for s in "${STAGE_NAMES[@]}"; do STATUS[$s]="not run"; NOTE[$s]="preflight failed"; done
    write_outputs
    echo "gpu_suite: stopped after the preflight ($((SECONDS - T0))s); see $OUTDIR/summary.txt"
    exit 3
fi
PREFLIGHT_STATUS=ok
# shellcheck disable=SC1091
. "$WORK/preflight.env"
export SUITE_CAPABILITY SUITE_CORES

for s in "${STAGE_NAMES[@]}"; do run_stage "$s"; done

echo "== summary ($OUTDIR/summary.txt)"
cat "$OUTDIR/summary.txt"
exit $FAILED
