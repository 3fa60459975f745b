#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU, in one command. Run from anywhere:
#
#   bash benchmarks/gpu.sh                              # PYTHON=.venv/bin/python (klustr_gpu installed)
#   bash benchmarks/gpu.sh --offline wheelhouse --out /tmp/gpu
#                                                       # no network: install from a wheelhouse
#   bash benchmarks/gpu.sh --dry-run                    # no GPU needed: every step on the CPU, small sizes
#
# --offline DIR: the host's Python (PYTHON, default python3) already has a CUDA torch; the
# wheelhouse DIR (`make wheelhouse`, docs/gpu.md) is checked (complete, built for this Python,
# what it left out present here), installed with `pip install --no-index --no-deps --target SITE`,
# checked again (every requirement met), and the steps run with PYTHONPATH=REPO:SITE (this
# working tree's code, the wheelhouse's dependencies, the host's torch).
#
# Steps, in this order (each bounded by `timeout`, each may fail or be skipped without stopping
# the others; all together within --budget seconds, default 480: a step gets what is left):
#   device          nvidia-smi name / memory, torch.cuda device properties, versions
#   corpus          a demo corpus of N clips (built in the background, on all but 4 cores, while
#                   the GPU-only steps run; kept in $WORK and reused), then scanned
#   pytest_gpu      pytest -m gpu on the test modules that hold gpu tests (CPU-vs-CUDA agreement)
#   knn             the torch k-NN graph (k=15, exact) of KNN_N random 32-d points
#   torchdr_umap    UMAP / t-SNE of DR_N synthetic points (20 Gaussian clusters in 80-d) with
#   torchdr_tsne      --engine torchdr, and their 10-NN accuracy; fitted on as many points as the
#                     free memory holds (dense n^2), the rest placed; a CUDA out-of-memory halves DR_N
#   features_cuda   klustr features --device cuda on the N clips (fresh project, fresh process)
#   features_cpu    the same with --device cpu
#   features_agree  the two sets of arrays agree (relative error < 1e-3, the tested tolerance)
#   map             klustr map on the N clips with --device cuda (engine auto), end to end
#   cpu_umap        the CPU engines (umap-learn, openTSNE) on CPU_REF_N of the DR_N points, for
#   cpu_tsne          the accuracy beside TorchDR's
#   cupy            host -> GPU -> host of the KNN_N x 32 array and a GEMM with CuPy, if it imports
#   cuml_umap       the reductions with --engine cuml, if cuML imports
#   cuml_tsne
#
# Writes OUT/gpu.json (every step: status, seconds, figures, log tail), OUT/gpu.md (a section for
# benchmarks/RESULTS.md) and OUT/gpu.log (every step's output). Options and environment:
#   --offline DIR     install the wheelhouse DIR as above first (needs no network)
#   --out DIR         where the three files go (default benchmarks/out/gpu, or gpu-dryrun)
#   --site DIR        where --offline installs (default /tmp/klustr-site-<wheelhouse hash>; reused)
#   --budget S        seconds for the whole run, install included (default 480; 0 = no limit)
#   --dry-run         the steps on the CPU with small sizes (N=60, KNN_N=5000, DR_N=400,
#                     CPU_REF_N=300, DR_ITERS=60; STEP_TIMEOUT 900, no budget): proves the path
#   --only a,b        run only these steps (corpus is added when a later step needs it)
#   --skip a,b        skip these steps
#   --append-results  also append gpu.md to benchmarks/RESULTS.md (never for a dry run)
#   PYTHON            the interpreter (default .venv/bin/python; with --offline, python3)
#   N, KNN_N, DR_N, CPU_REF_N, DR_ITERS   sizes (defaults 10000, 1000000, 100000, 10000, the
#                     configured iterations)
#   STEP_TIMEOUT      a cap on every step's own limit (seconds)
#   WORK              corpora and projects (default ~/.cache/klustr_gpu/bench/gpu; with
#                     --offline, /tmp/klustr-gpu-work)
#   KLUSTR_GPU_SH_ALLOW_CPU=1   run the full sizes on the CPU when torch sees no CUDA device
# Exit 2, one line, before any work: no CUDA device or a CPU-only torch (without --dry-run), a
# missing or incomplete wheelhouse, a wheelhouse for another Python. Otherwise exit 0 when every
# step that ran passed (skips allowed), 1 when one failed or ran out of time.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
STEPS="$HERE/gpu_steps"
COMMAND="bash benchmarks/gpu.sh $*"
CALLER_PWD="$PWD"
cd "$REPO" || exit 2
T0="$(date +%s)"

die() { echo "gpu.sh: $*" >&2; exit 2; }
abspath() { case "$1" in /*|'') echo "$1" ;; *) echo "$CALLER_PWD/$1" ;; esac; }

DRY=0; ONLY=""; SKIP=""; OFFLINE=""; OUT=""; SITE=""; BUDGET=""; APPEND=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --offline) [ $# -ge 2 ] || die "--offline needs the wheelhouse folder"; OFFLINE="$(abspath "$2")"; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$(abspath "$2")"; shift ;;
        --site) [ $# -ge 2 ] || die "--site needs a folder"; SITE="$(abspath "$2")"; shift ;;
        --budget) [ $# -ge 2 ] || die "--budget needs seconds"; BUDGET="$2"; shift ;;
        --only) ONLY="${2:-}"; shift ;;
        --skip) SKIP="${2:-}"; shift ;;
        --append-results) APPEND=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [ -n "$OFFLINE" ]; then
    PYTHON="${PYTHON:-python3}"
    WORK="${WORK:-${TMPDIR:-/tmp}/klustr-gpu-work}"
else
    PYTHON="${PYTHON:-.venv/bin/python}"
    WORK="${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/klustr_gpu/bench/gpu}"
fi
ALLOW_CPU="${KLUSTR_GPU_SH_ALLOW_CPU:-0}"
if [ "$DRY" = 1 ]; then
    ALLOW_CPU=1
    N="${N:-60}"; KNN_N="${KNN_N:-5000}"; DR_N="${DR_N:-400}"; CPU_REF_N="${CPU_REF_N:-300}"
    DR_ITERS="${DR_ITERS:-60}"; STEP_TIMEOUT="${STEP_TIMEOUT:-900}"; BUDGET="${BUDGET:-0}"
    OUT="${OUT:-$REPO/benchmarks/out/gpu-dryrun}"
else
    N="${N:-10000}"; KNN_N="${KNN_N:-1000000}"; DR_N="${DR_N:-100000}"; CPU_REF_N="${CPU_REF_N:-10000}"
    DR_ITERS="${DR_ITERS:-}"; STEP_TIMEOUT="${STEP_TIMEOUT:-}"; BUDGET="${BUDGET:-480}"
    OUT="${OUT:-$REPO/benchmarks/out/gpu}"
fi
case "$BUDGET" in ''|*[!0-9]*) die "--budget wants whole seconds, got '$BUDGET'" ;; esac
export N KNN_N DR_N CPU_REF_N DR_ITERS BUDGET COMMAND OFFLINE
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# -- before any work: tools, the wheelhouse, the device ------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python at $PYTHON (set PYTHON=...)"
command -v timeout >/dev/null 2>&1 || die "needs coreutils' timeout"
if [ -n "$OFFLINE" ]; then
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip, which --offline needs to install the wheelhouse"
    msg="$(PYTHONPATH= "$PYTHON" "$REPO/tools/wheelcheck.py" before "$OFFLINE" 2>&1)"; rc=$?
    [ "$rc" = 0 ] || die "${msg##*$'\n'}"
fi
allow=(); [ "$ALLOW_CPU" = 1 ] && allow=(--allow-cpu)
msg="$(timeout 300 "$PYTHON" "$STEPS/preflight.py" "${allow[@]}" 2>&1)"; rc=$?
[ "$rc" = 0 ] || die "${msg##*$'\n'}"
DEVICE="${msg##*$'\n'}"
[ "$DEVICE" = cpu ] && [ "$DRY" = 0 ] && \
    echo "gpu.sh: torch sees no CUDA device: every step runs on the CPU (KLUSTR_GPU_SH_ALLOW_CPU=1)" >&2
export KLUSTR_BENCH_DEVICE="$DEVICE"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/klustr-gpu-sh.XXXXXX")"
BG_PID=""
trap '[ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null; rm -rf "$STATE"' EXIT
mkdir -p "$WORK" "$OUT" || die "cannot create $WORK or $OUT"
LIB="$WORK/library-$N"
SCANNED="$WORK/scanned-$N"
STEPS_RUN=()
FAILED=0

elapsed() { echo $(( $(date +%s) - T0 )); }

# -- installing the wheelhouse ----------------------------------------------------------------------
if [ -n "$OFFLINE" ]; then
    STEPS_RUN+=(install)
    hash="$(sha256sum "$OFFLINE/klustr-wheelhouse.json" | cut -c1-12)"
    SITE="${SITE:-${TMPDIR:-/tmp}/klustr-site-$hash}"
    t0="$(date +%s)"
    if [ "$(cat "$SITE/.klustr-wheelhouse" 2>/dev/null)" = "$hash" ]; then
        echo "== install: $SITE already holds this wheelhouse" >&2
        status=ok; rc=0
    else
        echo "== install (limit 300s): pip install --no-index --no-deps --target $SITE $OFFLINE/*.whl" >&2
        rm -rf "$SITE"
        timeout 300 "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
            --target "$SITE" "$OFFLINE"/*.whl >"$STATE/install.log" 2>&1; rc=$?
        [ "$rc" = 0 ] && echo "$hash" >"$SITE/.klustr-wheelhouse" && status=ok || status=failed
    fi
    printf '{"status": "%s", "rc": %d, "wall_s": %d, "reason": "%s"}\n' "$status" "$rc" $(( $(date +%s) - t0 )) \
        "$(ls "$OFFLINE"/*.whl | wc -l) wheels from $OFFLINE into $SITE" >"$STATE/install.status"
    if [ "$status" != ok ]; then
        tail -n 5 "$STATE/install.log" >&2
        die "installing the wheelhouse failed (pip exit $rc; log above)"
    fi
    msg="$(PYTHONPATH="$SITE" "$PYTHON" "$REPO/tools/wheelcheck.py" after "$OFFLINE" 2>&1)"; rc=$?
    [ "$rc" = 0 ] || die "${msg##*$'\n'}"
    export PYTHONPATH="$REPO:$SITE"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

# -- running one step -------------------------------------------------------------------------------
wanted() {  # wanted NAME: is this step selected by --only / --skip? (device always runs: it names the run)
    local name="$1"
    [ "$name" = device ] && return 0
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 1
    fi
    [[ ",$SKIP," != *",$name,"* ]]
}

record() {  # record NAME STATUS REASON
    printf '{"status": "%s", "reason": "%s"}\n' "$2" "$3" >"$STATE/$1.status"
}

limit_for() {  # limit_for OWN_LIMIT: the step's limit, capped by STEP_TIMEOUT and what is left of the budget
    local lim="$1" left
    [ -n "$STEP_TIMEOUT" ] && [ "$STEP_TIMEOUT" -lt "$lim" ] && lim="$STEP_TIMEOUT"
    if [ "$BUDGET" -gt 0 ]; then
        left=$(( BUDGET - $(elapsed) - 5 ))
        [ "$left" -lt "$lim" ] && lim="$left"
    fi
    echo "$lim"
}

run_step() {  # run_step NAME OWN_LIMIT_S COMMAND... ; exit 77 from a command means "skipped"
    local name="$1" limit
    limit="$(limit_for "$2")"
    shift 2
    STEPS_RUN+=("$name")
    if ! wanted "$name"; then
        record "$name" skipped "not selected"; echo "== $name: skipped (not selected)" >&2; return 0
    fi
    if [ "$limit" -lt 10 ]; then
        record "$name" out_of_time "not started: out of time (budget ${BUDGET} s)"; FAILED=1
        echo "== $name: out of time (budget ${BUDGET} s)" >&2; return 0
    fi
    echo "== $name (limit ${limit}s, at $(elapsed)s): $*" >&2
    local t0 t1 rc status
    t0="$(date +%s.%N)"
    KLUSTR_FIG="$STATE/$name.json" timeout --kill-after=10 "$limit" "$@" >"$STATE/$name.log" 2>&1
    rc=$?
    t1="$(date +%s.%N)"
    case "$rc" in
        0) status=ok ;;
        77) status=skipped ;;
        124|137) status=timeout; FAILED=1 ;;
        *) status=failed; FAILED=1 ;;
    esac
    printf '{"status": "%s", "rc": %d, "wall_s": %s, "limit_s": %d}\n' "$status" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" "$limit" >"$STATE/$name.status"
    echo "   $status (exit $rc); last lines:" >&2
    tail -n 3 "$STATE/$name.log" | sed 's/^/   | /' >&2
    return 0
}

needs_corpus() {
    local s
    for s in features_cuda features_cpu features_agree map; do
        wanted "$s" && return 0
    done
    return 1
}

ok() { grep -q '"status": "ok"' "$STATE/$1.status" 2>/dev/null; }

after_corpus() {  # after_corpus NAME LIMIT COMMAND...: a step that needs the corpus
    if ok corpus || ! wanted "$1"; then run_step "$@"
    else STEPS_RUN+=("$1"); record "$1" skipped "no corpus (the corpus step did not finish)"; fi
}

# -- the steps ----------------------------------------------------------------------------------------
NVSMI=""
if command -v nvidia-smi >/dev/null 2>&1; then
    NVSMI="$(timeout 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 8)"
fi
export NVSMI
PY="$PYTHON"
run_step device 60 "$PY" "$STEPS/step_device.py"
if needs_corpus; then            # in the background: CPU work while the GPU-only steps run
    run_step corpus 300 "$PY" "$STEPS/step_corpus.py" "$LIB" "$SCANNED" "$N" &
    BG_PID=$!
fi
mapfile -t GPU_TESTS < <(grep -l '^@pytest\.mark\.gpu' "$REPO"/tests/test_*.py)
run_step pytest_gpu 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}"
run_step knn 90 "$PY" "$STEPS/step_knn.py" "$KNN_N" "$DEVICE"
run_step torchdr_umap 120 "$PY" "$STEPS/step_reduce.py" torchdr umap "$DR_N"
run_step torchdr_tsne 120 "$PY" "$STEPS/step_reduce.py" torchdr tsne "$DR_N"
if [ -n "$BG_PID" ]; then
    wait "$BG_PID"; BG_PID=""
    STEPS_RUN+=(corpus)
    grep -q '"status": "\(failed\|timeout\)"' "$STATE/corpus.status" 2>/dev/null && FAILED=1
fi
after_corpus features_cuda 120 "$PY" "$STEPS/step_features.py" "$SCANNED" "$WORK/features-cuda-$N" "$DEVICE"
after_corpus features_cpu 150 "$PY" "$STEPS/step_features.py" "$SCANNED" "$WORK/features-cpu-$N" cpu
if ok features_cuda && ok features_cpu; then
    run_step features_agree 60 "$PY" "$STEPS/step_agree.py" "$WORK/features-cuda-$N" "$WORK/features-cpu-$N"
else
    STEPS_RUN+=(features_agree); record features_agree skipped "needs both features steps"
fi
after_corpus map 150 "$PY" "$STEPS/step_map.py" "$LIB" "$WORK/map-$N" "$DEVICE"
run_step cpu_umap 90 "$PY" "$STEPS/step_reduce.py" cpu umap "$CPU_REF_N"
run_step cpu_tsne 90 "$PY" "$STEPS/step_reduce.py" cpu tsne "$CPU_REF_N"
run_step cupy 30 "$PY" "$STEPS/step_cupy.py" "$KNN_N"
run_step cuml_umap 90 "$PY" "$STEPS/step_reduce.py" cuml umap "$DR_N"
run_step cuml_tsne 90 "$PY" "$STEPS/step_reduce.py" cuml tsne "$DR_N"

# -- gpu.json, gpu.md, gpu.log --------------------------------------------------------------------------
MODE=real
{ [ "$DRY" = 1 ] || [ "$DEVICE" != cuda ]; } && MODE=dry
APPEND_RESULTS=""
[ "$APPEND" = 1 ] && APPEND_RESULTS="$REPO/benchmarks/RESULTS.md"
ELAPSED="$(elapsed)" APPEND_RESULTS="$APPEND_RESULTS" \
    "$PY" "$STEPS/step_report.py" "$STATE" "$OUT" "$MODE" "${STEPS_RUN[@]}" || FAILED=1
echo "gpu.sh: $(elapsed) s in all; $([ "$FAILED" = 0 ] && echo 'every step that ran passed' || echo 'some steps failed or ran out of time'); figures in $OUT" >&2
exit "$FAILED"
