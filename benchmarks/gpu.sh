#!/usr/bin/env bash
# The GPU part of the benchmarks, for a machine with an NVIDIA GPU. Run from anywhere:
#
#   bash benchmarks/gpu.sh                       # PYTHON=.venv/bin/python, N=10000 clips
#   PYTHON=/opt/conda/bin/python N=20000 bash benchmarks/gpu.sh --skip pytest_gpu
#   bash benchmarks/gpu.sh --dry-run             # no GPU needed: every step on the CPU, small sizes
#
# Steps (each bounded by `timeout`, each may fail or be skipped without stopping the others):
#   device          nvidia-smi name / memory, torch.cuda.get_device_name, versions
#   pytest_gpu      $PYTHON -m pytest -m gpu -q (the CPU-vs-CUDA agreement tests)
#   corpus          a demo corpus of N clips (klustr demo-corpus, kept in $WORK and reused), scanned
#   features_cuda   klustr features --device cuda on the N clips (fresh project, fresh process)
#   features_cpu    the same with --device cpu
#   knn             the torch k-NN graph (klustr_gpu.reduce.neighbours.knn_graph, k=15) of KNN_N
#                   random 32-d points on CUDA
#   torchdr_umap    UMAP / t-SNE of DR_N synthetic points (20 Gaussian clusters in 80-d, the
#   torchdr_tsne      default preprocessing and parameters) with --engine torchdr, if torchdr imports
#   cupy            host -> GPU -> host of the KNN_N x 32 array and a GEMM with CuPy, if it imports
#   cuml_umap       the same reductions with --engine cuml, if cuml imports
#   cuml_tsne
#   map             klustr map on the N clips with --device cuda (engine auto), end to end
#
# Writes benchmarks/out/gpu.json (every step: status, seconds, figures) and appends a dated
# section "GPU run on <device>" to benchmarks/RESULTS.md. Options and environment:
#   --dry-run         KLUSTR_GPU_SH_ALLOW_CPU=1 with small sizes (N=200, KNN_N=20000, DR_N=1000);
#                     writes benchmarks/out/gpu-dryrun.json, never touches RESULTS.md
#   --only a,b        run only these steps (corpus is added when a later step needs it)
#   --skip a,b        skip these steps
#   PYTHON            the interpreter with klustr_gpu installed (default .venv/bin/python)
#   N, KNN_N, DR_N    sizes (defaults 10000, 1000000, 100000)
#   STEP_TIMEOUT      seconds allowed to each heavy step (default 1800)
#   WORK              where corpora and projects live (default ~/.cache/klustr_gpu/bench/gpu)
#   KLUSTR_GPU_SH_ALLOW_CPU=1   run on the CPU when torch sees no CUDA device (else exit 2);
#                     results from a CPU run are never appended to RESULTS.md
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
cd "$REPO" || exit 2

DRY=0
ONLY=""
SKIP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --only) ONLY="${2:-}"; shift ;;
        --skip) SKIP="${2:-}"; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PYTHON="${PYTHON:-.venv/bin/python}"
ALLOW_CPU="${KLUSTR_GPU_SH_ALLOW_CPU:-0}"
if [ "$DRY" = 1 ]; then
    ALLOW_CPU=1
    N="${N:-200}"; KNN_N="${KNN_N:-20000}"; DR_N="${DR_N:-1000}"
    STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
    OUT_JSON="$REPO/benchmarks/out/gpu-dryrun.json"
else
    N="${N:-10000}"; KNN_N="${KNN_N:-1000000}"; DR_N="${DR_N:-100000}"
    OUT_JSON="$REPO/benchmarks/out/gpu.json"
fi
STEP_TIMEOUT="${STEP_TIMEOUT:-1800}"
export N KNN_N DR_N STEP_TIMEOUT
WORK="${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/klustr_gpu/bench/gpu}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu.sh: no Python at $PYTHON (set PYTHON=...)" >&2
    exit 2
fi
if ! command -v timeout >/dev/null 2>&1; then
    echo "gpu.sh: needs coreutils' timeout" >&2
    exit 2
fi

STATE="$(mktemp -d "${TMPDIR:-/tmp}/klustr-gpu-sh.XXXXXX")"
trap 'rm -rf "$STATE"' EXIT
mkdir -p "$WORK" "$REPO/benchmarks/out"
LIB="$WORK/library-$N"
SCANNED="$WORK/scanned-$N"

# -- which device the steps use -----------------------------------------------------------------
HAVE_CUDA="$(timeout 300 "$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [ "$HAVE_CUDA" = 1 ]; then
    DEVICE=cuda
elif [ "$ALLOW_CPU" = 1 ]; then
    DEVICE=cpu
    echo "gpu.sh: torch sees no CUDA device: running every step on the CPU (figures not appended to RESULTS.md)" >&2
else
    echo "gpu.sh: torch ($PYTHON) sees no CUDA device; run on a GPU machine, or pass --dry-run" \
         "(or KLUSTR_GPU_SH_ALLOW_CPU=1) to exercise the steps on the CPU" >&2
    exit 2
fi
export KLUSTR_BENCH_DEVICE="$DEVICE"

# -- running one step -----------------------------------------------------------------------------
STEPS_RUN=()

wanted() {  # wanted NAME: is this step selected by --only / --skip? (device always runs: it names the run)
    local name="$1"
    [ "$name" = device ] && return 0
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 1
    fi
    [[ ",$SKIP," != *",$name,"* ]]
}

run_step() {  # run_step NAME LIMIT_S COMMAND... ; exit 77 from a command means "skipped"
    local name="$1" limit="$2"
    shift 2
    STEPS_RUN+=("$name")
    if ! wanted "$name"; then
        printf '{"status": "skipped", "reason": "not selected"}\n' >"$STATE/$name.status"
        echo "== $name: skipped (not selected)" >&2
        return 0
    fi
    echo "== $name (limit ${limit}s): $*" >&2
    local t0 t1 rc status
    t0="$(date +%s.%N)"
    KLUSTR_FIG="$STATE/$name.json" timeout --kill-after=30 "$limit" "$@" >"$STATE/$name.log" 2>&1
    rc=$?
    t1="$(date +%s.%N)"
    case "$rc" in
        0) status=ok ;;
        77) status=skipped ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '{"status": "%s", "rc": %d, "wall_s": %s}\n' "$status" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" >"$STATE/$name.status"
    echo "   $status (exit $rc); last lines:" >&2
    tail -n 4 "$STATE/$name.log" | sed 's/^/   | /' >&2
    return 0
}

no_corpus() {  # no_corpus NAME: record a step that cannot run without the corpus
    STEPS_RUN+=("$1")
    local why="no corpus (the corpus step failed)"
    wanted "$1" || why="not selected"
    printf '{"status": "skipped", "reason": "%s"}\n' "$why" >"$STATE/$1.status"
}

needs_corpus() {
    local s
    for s in features_cuda features_cpu map; do
        wanted "$s" && return 0
    done
    return 1
}

# -- the Python parts (written to files so that `timeout` runs them; named step_* so that none
#    shadows a module it imports, e.g. cupy) ---------------------------------------------------------
cat >"$STATE/step_common.py" <<'PY'
import json, os, time


def save(fig: dict) -> None:
    with open(os.environ["KLUSTR_FIG"], "w") as fh:
        json.dump(fig, fh, default=str)


def gpu_peak_mib():
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def synthetic(n: int, seed: int = 0):
    """As benchmarks/reduce.py --synthetic: 80-d features in 20 Gaussian clusters."""
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, size=(20, 80)).astype(np.float32)
    labels = rng.choice(20, size=n, p=rng.dirichlet(np.ones(20) * 2))
    X = centres[labels] + rng.normal(0, 1.0, size=(n, 80)).astype(np.float32) * \
        rng.uniform(0.5, 2.0, 20)[labels, None].astype(np.float32)
    return X.astype(np.float32), labels


def knn_accuracy(Y, labels, n: int = 20000):
    """5-fold 10-NN label accuracy on the 2-D map (a subsample of n points)."""
    import numpy as np
    try:
        from sklearn.model_selection import cross_val_score
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError:
        return None
    sub = np.random.default_rng(1).choice(len(Y), size=min(len(Y), n), replace=False)
    return round(float(cross_val_score(KNeighborsClassifier(10), Y[sub], labels[sub], cv=5).mean()), 4)
PY

cat >"$STATE/step_device.py" <<'PY'
import os, platform, sys
sys.path.insert(0, os.path.dirname(__file__))
from step_common import save
import torch
fig = {"nvidia_smi": os.environ.get("NVSMI", "").strip() or None, "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "python": platform.python_version(), "cpu_count": os.cpu_count(),
       "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    fig.update(name=torch.cuda.get_device_name(0), memory_gib=round(p.total_memory / 2**30, 1),
               capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
else:
    fig["name"] = f"CPU ({platform.processor() or platform.machine()}, no CUDA)"
fig["summary"] = f"{fig['name']}; torch {fig['torch']} (CUDA {fig['torch_cuda']})"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_corpus.py" <<'PY'
import os, shutil, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import save
lib, scanned, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
built = False
if not os.path.exists(os.path.join(lib, "labels.csv")):
    shutil.rmtree(lib, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "demo-corpus", lib, "--n", str(n), "-q"], check=True)
    built = True
t_corpus = time.perf_counter() - t
import klustr_gpu as kg
shutil.rmtree(scanned, ignore_errors=True)
t = time.perf_counter()
df = kg.scan(lib, scanned, labels=os.path.join(lib, "labels.csv"), progress=False).manifest
ok = int((df.status == "ok").sum())
fig = {"files": len(df), "ok": ok, "built": built, "corpus_s": round(t_corpus, 2),
       "scan_s": round(time.perf_counter() - t, 2), "library": lib}
fig["summary"] = f"{len(df):,} files ({ok:,} ok){', built' if built else ', reused'}; scan {fig['scan_s']} s"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_features.py" <<'PY'
import os, shutil, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import gpu_peak_mib, save
scanned, dest, device = sys.argv[1:4]
sets = os.environ.get("SETS") or None
import klustr_gpu as kg
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(scanned, dest)                     # manifest and klustr.toml: every feature computed
t = time.perf_counter()
s = kg.compute_features(dest, sets=sets, device=device, progress=False)
sec = time.perf_counter() - t
names = list(s.sets)
clips = max(s.sets[k].computed for k in names) if names else 0
fig = {"device": s.device, "sets": names, "clips": clips, "seconds": round(sec, 2),
       "clips_per_s": round(clips / sec, 1) if sec else None, "gpu_peak_mib": gpu_peak_mib(),
       "compute_s": {k: s.sets[k].seconds for k in names}}
fig["summary"] = f"{clips:,} clips, sets {','.join(names)} on {s.device}: {fig['clips_per_s']} clips/s"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_knn.py" <<'PY'
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import gpu_peak_mib, save
import numpy as np
from klustr_gpu.reduce.neighbours import knn_graph
n, device = int(sys.argv[1]), sys.argv[2]
k = 15
X = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
knn_graph(X[:5000], k, device=device)               # warm-up: CUDA context, kernels
t = time.perf_counter()
idx, dist = knn_graph(X, k, device=device)
sec = time.perf_counter() - t
assert idx.shape == (n, k) and np.all(np.diff(dist, axis=1) >= -1e-4)
fig = {"points": n, "dim": 32, "k": k, "device": device, "seconds": round(sec, 3),
       "points_per_s": round(n / sec), "gpu_peak_mib": gpu_peak_mib()}
fig["summary"] = f"{n:,} x 32-d, k={k} (exact) on {device}: {sec:.2f} s"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_reduce.py" <<'PY'
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import gpu_peak_mib, knn_accuracy, save, synthetic
engine, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import importlib.util
if importlib.util.find_spec(engine) is None:
    print(f"{engine} is not installed: skipped")
    sys.exit(77)
import logging
logging.basicConfig(level=logging.WARNING)
from klustr_gpu.config import Config
from klustr_gpu.reduce import fit_embedding, preprocess
from klustr_gpu.reduce.embed import method_params
X, labels = synthetic(n)
r = Config().reduce
t = time.perf_counter()
Xp = preprocess(X, standardize=True, pca_components=r.pca_components)
Y = fit_embedding(Xp, method, engine=engine, seed=0, **method_params(r, method))
sec = time.perf_counter() - t
acc = knn_accuracy(Y, labels)
fig = {"engine": engine, "method": method, "points": n, "seconds": round(sec, 2), "accuracy_10nn": acc,
       "gpu_peak_mib_torch": gpu_peak_mib(), "data": "synthetic: 20 Gaussian clusters in 80-d, PCA 32"}
fig["summary"] = f"{method} of {n:,} points with --engine {engine}: {sec:.1f} s, 10-NN accuracy {acc}"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_cupy.py" <<'PY'
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import save
n = int(sys.argv[1])
try:
    import cupy
except ImportError:
    print("cupy is not installed: skipped")
    sys.exit(77)
import numpy as np
X = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
cupy.asarray(X[:1000]).sum()                        # warm-up
cupy.cuda.Device().synchronize()
t = time.perf_counter()
G = cupy.asarray(X)
back = cupy.asnumpy(G)
t_copy = time.perf_counter() - t
t = time.perf_counter()
C = G.T @ G                                          # a 32 x 32 Gram matrix over every point
cupy.cuda.Device().synchronize()
t_gemm = time.perf_counter() - t
assert back.shape == X.shape and np.allclose(cupy.asnumpy(C), X.T.astype(np.float64) @ X, rtol=1e-3, atol=1e-1 * n ** 0.5)
fig = {"points": n, "round_trip_s": round(t_copy, 4), "gram_s": round(t_gemm, 4),
       "round_trip_gb_per_s": round(2 * X.nbytes / t_copy / 1e9, 2), "cupy": cupy.__version__}
fig["summary"] = f"{n:,} x 32 float32 host->GPU->host {t_copy * 1e3:.1f} ms ({fig['round_trip_gb_per_s']} GB/s), Gram {t_gemm * 1e3:.1f} ms"
print(fig["summary"])
save(fig)
PY

cat >"$STATE/step_map.py" <<'PY'
import os, re, shutil, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from step_common import save
lib, proj, device = sys.argv[1:4]
shutil.rmtree(proj, ignore_errors=True)
cmd = [sys.executable, "-m", "klustr_gpu.cli", "map", lib, "-o", proj, "--labels", os.path.join(lib, "labels.csv"),
       "--device", device, "-q"] + (["--engine", "cpu"] if device == "cpu" else [])
t = time.perf_counter()
r = subprocess.run(cmd, capture_output=True, text=True)
sec = time.perf_counter() - t
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr[-3000:])
if r.returncode:
    sys.exit(r.returncode)
stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", r.stdout.split("time:", 1)[-1].split("\n")[0])
          if k != "total"}
pts = re.search(r"points: (\d+)", r.stdout)
import json
params = {}
try:
    import klustr_gpu as kg
    _, params = kg.Project(proj).read_embedding()
except Exception as exc:  # noqa: BLE001 - the figure is optional
    params = {"error": str(exc)}
fig = {"command": " ".join(["klustr"] + cmd[3:]), "seconds": round(sec, 2), "stages_s": stages,
       "points": int(pts.group(1)) if pts else None, "engine": params.get("engine"), "device": device}
fig["summary"] = (f"{fig['points']:,} points in {sec:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                  + f"); engine {fig['engine']}") if fig["points"] else f"{sec:.1f} s"
print(fig["summary"])
save(fig)
PY

# -- the steps --------------------------------------------------------------------------------------
NVSMI=""
if command -v nvidia-smi >/dev/null 2>&1; then
    NVSMI="$(timeout 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 8)"
    echo "nvidia-smi: $NVSMI" >&2
fi
export NVSMI

run_step device 300 "$PYTHON" "$STATE/step_device.py"
# gpu-marked tests (they skip cleanly where torch sees no CUDA)
run_step pytest_gpu "$STEP_TIMEOUT" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
if needs_corpus; then
    run_step corpus "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_corpus.py" "$LIB" "$SCANNED" "$N"
fi
CORPUS_OK=0
grep -q '"ok"' "$STATE/corpus.status" 2>/dev/null && CORPUS_OK=1
if [ "$CORPUS_OK" = 1 ]; then
    if [ "$DEVICE" = cuda ]; then
        run_step features_cuda "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_features.py" "$SCANNED" "$WORK/features-cuda-$N" cuda
    else
        run_step features_cuda "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_features.py" "$SCANNED" "$WORK/features-cuda-$N" cpu
    fi
    run_step features_cpu "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_features.py" "$SCANNED" "$WORK/features-cpu-$N" cpu
else
    no_corpus features_cuda
    no_corpus features_cpu
fi
run_step knn "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_knn.py" "$KNN_N" "$DEVICE"
run_step torchdr_umap "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_reduce.py" torchdr umap "$DR_N"
run_step torchdr_tsne "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_reduce.py" torchdr tsne "$DR_N"
run_step cupy "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_cupy.py" "$KNN_N"
run_step cuml_umap "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_reduce.py" cuml umap "$DR_N"
run_step cuml_tsne "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_reduce.py" cuml tsne "$DR_N"
if [ "$CORPUS_OK" = 1 ]; then
    run_step map "$STEP_TIMEOUT" "$PYTHON" "$STATE/step_map.py" "$LIB" "$WORK/map-$N" "$DEVICE"
else
    no_corpus map
fi

# -- gpu.json and the RESULTS.md section --------------------------------------------------------------
APPEND=0
if [ "$DRY" = 0 ] && [ "$DEVICE" = cuda ]; then
    APPEND=1
fi
"$PYTHON" - "$STATE" "$OUT_JSON" "$APPEND" "$REPO/benchmarks/RESULTS.md" "${STEPS_RUN[@]}" <<'PY'
import datetime as dt, json, os, re, sys
state, out_json, append, results = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
steps = sys.argv[5:]
env = {k: os.environ.get(k) for k in ("N", "KNN_N", "DR_N", "STEP_TIMEOUT", "KLUSTR_BENCH_DEVICE")}
run = {"date": dt.datetime.now().isoformat(timespec="seconds"), "settings": env, "steps": {}}


def load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


for s in steps:
    st = load(os.path.join(state, f"{s}.status"))
    st["figures"] = load(os.path.join(state, f"{s}.json"))
    try:
        with open(os.path.join(state, f"{s}.log"), errors="replace") as fh:
            st["log_tail"] = fh.read()[-1500:]
    except OSError:
        pass
    if s == "pytest_gpu" and "log_tail" in st:
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", st["log_tail"]))
        st["figures"] = {"counts": counts, "summary": ", ".join(f"{v} {k}" for k, v in counts.items())}
    run["steps"][s] = st
dev = run["steps"].get("device", {}).get("figures", {})
name = dev.get("name") or "unknown device"
run["device"] = dev
f = {s: run["steps"].get(s, {}).get("figures", {}) for s in ("features_cuda", "features_cpu")}
if str(f["features_cuda"].get("device", "")).startswith("cuda") and f["features_cpu"].get("clips_per_s"):
    run["features_speedup"] = round(f["features_cuda"]["clips_per_s"] / f["features_cpu"]["clips_per_s"], 2)
os.makedirs(os.path.dirname(out_json), exist_ok=True)
with open(out_json, "w") as fh:
    json.dump(run, fh, indent=1, default=str)

lines = [f"## GPU run on {name} ({run['date'][:10]})", "",
         f"Command: `bash benchmarks/gpu.sh` (N={env['N']} clips, k-NN {int(env['KNN_N'] or 0):,} points, "
         f"reductions {int(env['DR_N'] or 0):,} points). Device: {dev.get('nvidia_smi') or name}; "
         f"torch {dev.get('torch')} (CUDA {dev.get('torch_cuda')}), {dev.get('cpu_count')} CPU cores, "
         f"Python {dev.get('python')}. Raw figures: `{os.path.relpath(out_json, os.path.dirname(os.path.dirname(results)))}`.", "",
         "| step | status | seconds | figures |", "|---|---|---:|---|"]
for s in steps:
    st = run["steps"][s]
    summ = (st.get("figures") or {}).get("summary") or st.get("reason") or ""
    if not summ and st.get("log_tail", "").strip():          # skipped or failed: say why
        summ = st["log_tail"].strip().splitlines()[-1][:200]
    lines.append(f"| {s} | {st.get('status', '?')} | {st.get('wall_s', '')} | {summ.replace('|', '/')} |")
if "features_speedup" in run:
    lines += ["", f"Features: CUDA {run['features_speedup']}× the CPU on the same clips "
              "(each a fresh process: imports, CUDA start-up and decoding included)."]
section = "\n".join(lines) + "\n"
print(section)
print(f"figures: {out_json}", file=sys.stderr)
if append:
    with open(results, "a") as fh:
        fh.write("\n" + section)
    print(f"appended to {results}", file=sys.stderr)
else:
    print("(not appended to RESULTS.md: dry run or no CUDA device)", file=sys.stderr)
PY
