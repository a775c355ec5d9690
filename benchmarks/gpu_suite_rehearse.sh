# Sourced by benchmarks/gpu_suite.sh --rehearse OUTDIR: the GPU machine's software, tried on this one.
#
# The device tool's H200 runs python3 3.12 with torch 2.11, triton 3.6 and torchvision 0.26, pytest,
# pytest-benchmark, hypothesis, numpy, pillow, pybind11, ninja, PyYAML and tqdm, and no pycocotools
# (the library's device KINDS.md). rehearse() builds such a virtualenv (DIFFDET_REHEARSE_VENV, default
# .rehearse-venv in the repository, reused once complete), copies the working tree as the device tool
# does (tracked and untracked-not-ignored files) into VENV/src, and runs there, under that venv:
# `gpu_suite.sh --dry-run` with DIFFDET_SUITE_BUILD=1 (so its build stage runs the GPU machine's pip
# command, CPU-only here) into OUTDIR/suite, then the CPU tests (DIFFDET_REHEARSE_TESTS, default tests)
# with TRITON_INTERPRET=1 into OUTDIR/cpu_tests.xml and cpu_tests.txt. OUTDIR/rehearse.txt sums it up.
# Exit status: 0 when the dry run and the tests passed, 1 otherwise, 4 when the venv cannot be made.

REHEARSE_PACKAGES=(torch==2.11.0 triton==3.6.0 torchvision==0.26.0 pytest pytest-benchmark hypothesis numpy
                   pillow pybind11 ninja pyyaml tqdm "setuptools>=69" wheel)

# The base interpreter: DIFFDET_REHEARSE_PYTHON, else python3.12 (the GPU machine's), else python3.11.
rehearse_python() {
    local candidate
    for candidate in ${DIFFDET_REHEARSE_PYTHON:-python3.12 python3.11}; do
        if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2> /dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

rehearse() {
    local out="$1" venv="${DIFFDET_REHEARSE_VENV:-$ROOT/.rehearse-venv}" t0=$SECONDS
    local base src py suite_rc test_rc commit
    local report="$out/rehearse.txt"
    mkdir -p "$out" && : > "$report"
    log() { echo "$*" | tee -a "$report"; }
    if [ ! -e "$venv/.ready" ]; then
        base="$(rehearse_python)" \
            || { log "rehearse: no python3.12/python3.11 (set DIFFDET_REHEARSE_PYTHON)"; return 4; }
        log "rehearse: creating $venv with $base and ${REHEARSE_PACKAGES[*]}"
        "$base" -m venv "$venv" && "$venv/bin/python" -m pip install -q "${REHEARSE_PACKAGES[@]}" \
            || { log "rehearse: could not build the venv $venv"; return 4; }
        touch "$venv/.ready"
    fi
    py="$venv/bin/python"
    log "rehearse: venv $venv: $("$py" -c 'import sys, torch, triton, torchvision as tv
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, "
      f"torchvision {tv.__version__}")' 2>&1)"
    if "$py" -c 'import pycocotools' 2> /dev/null; then
        log "rehearse: WARNING: pycocotools is installed in $venv; the GPU machine has none"
    else
        log "rehearse: pycocotools absent, as on the GPU machine"
    fi

    # The device tool copies tracked and untracked-not-ignored files; keep the previous build's outputs
    # (diffdet/_C*.so, build/) and the files' times so an unchanged csrc/ is not compiled again.
    src="$venv/src"
    mkdir -p "$src"
    find "$src" -mindepth 1 -maxdepth 1 ! -name build ! -name diffdet -exec rm -rf {} +
    find "$src/diffdet" -mindepth 1 ! -name '_C*.so' -delete 2> /dev/null
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
        | (cd "$ROOT" && xargs -0 cp -p -P --parents -t "$src" 2> /dev/null)
    # The copy has no .git, as on the GPU machine: the commit travels in DIFFDET_COMMIT.
    commit="$(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo unknown)"
    [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2> /dev/null)" ] || commit="$commit-dirty"
    export DIFFDET_COMMIT="${DIFFDET_COMMIT:-$commit}"
    log "rehearse: working tree at $DIFFDET_COMMIT copied to $src"

    # A CPU-only build takes minutes on a small shared machine: wider caps than the GPU machine's.
    (cd "$src" && DIFFDET_SUITE_BUILD=1 PYTHON="$py" DIFFDET_SUITE_BUDGET="${DIFFDET_SUITE_BUDGET:-1800}" \
        DIFFDET_SUITE_CAP_BUILD="${DIFFDET_SUITE_CAP_BUILD:-1200}" \
        bash benchmarks/gpu_suite.sh --dry-run "$out/suite")
    suite_rc=$?
    log "rehearse: dry run (with the build) exit $suite_rc; $out/suite/summary.txt:"
    sed 's/^/    /' "$out/suite/summary.txt" >> "$report"

    # shellcheck disable=SC2086
    (cd "$src" && TRITON_INTERPRET=1 "$py" -m pytest -q -p no:cacheprovider --junitxml="$out/cpu_tests.xml" \
        ${DIFFDET_REHEARSE_TESTS:-tests}) > "$out/cpu_tests.txt" 2>&1
    test_rc=$?
    log "rehearse: CPU tests (${DIFFDET_REHEARSE_TESTS:-tests}) exit $test_rc:" \
        "$("$py" "$ROOT/benchmarks/gpu_suite_report.py" junit "$out/cpu_tests.xml")"
    grep -E '^(FAILED|ERROR) ' "$out/cpu_tests.txt" | head -n 40 | tee -a "$report"
    log "rehearse: done in $((SECONDS - t0))s; $report"
    [ "$suite_rc" = 0 ] && [ "$test_rc" = 0 ]
}
