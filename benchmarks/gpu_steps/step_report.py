"""gpu.json (every step: status, seconds, figures, log tail) and gpu.md (a Markdown section for
benchmarks/RESULTS.md) from the state folder gpu.sh filled; optionally appended to RESULTS.md."""
import datetime as dt
import json
import os
import re
import sys

state, out_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]          # mode: real | dry
append_to = os.environ.get("APPEND_RESULTS") or ""
steps = sys.argv[4:]
env = {k: os.environ.get(k) for k in ("N", "KNN_N", "DR_N", "CPU_REF_N", "DR_ITERS", "BUDGET", "KLUSTR_BENCH_DEVICE",
                                      "OFFLINE", "COMMAND")}


def load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def log_of(name):
    try:
        with open(os.path.join(state, f"{name}.log"), errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


run = {"date": dt.datetime.now().isoformat(timespec="seconds"), "dry_run": mode == "dry", "settings": env,
       "elapsed_s": float(os.environ.get("ELAPSED") or 0), "steps": {}}
for s in steps:
    st = load(os.path.join(state, f"{s}.status"))
    st["figures"] = load(os.path.join(state, f"{s}.json"))
    st["log_tail"] = log_of(s)[-1500:]
    if s == "pytest_gpu" and st["log_tail"]:
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", st["log_tail"])}
        st["figures"] = {"counts": counts, "summary": ", ".join(f"{v} {k}" for k, v in counts.items())}
    run["steps"][s] = st
dev = run["steps"].get("device", {}).get("figures", {})
run["device"] = dev
fig = {s: run["steps"].get(s, {}).get("figures", {}) for s in steps}
fc, fp = fig.get("features_cuda", {}), fig.get("features_cpu", {})
if str(fc.get("device", "")).startswith("cuda") and fp.get("clips_per_s"):
    run["features_speedup"] = round(fc["clips_per_s"] / fp["clips_per_s"], 2)
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "gpu.json"), "w") as fh:
    json.dump(run, fh, indent=1, default=str)
with open(os.path.join(out_dir, "gpu.log"), "w") as fh:
    for s in steps:
        fh.write(f"===== {s} ({run['steps'][s].get('status', '?')})\n{log_of(s)}\n")


def n(key):
    return f"{int(env.get(key) or 0):,}"


name = dev.get("name") or "unknown device"
title = f"## GPU run on {name} ({run['date'][:10]})" + (" — dry run on the CPU, not GPU figures" if mode == "dry" else "")
lines = [title, "",
         f"Command: `{env.get('COMMAND') or 'bash benchmarks/gpu.sh'}` ({n('N')} clips, k-NN {n('KNN_N')} points, "
         f"reductions {n('DR_N')} points, CPU engines on {n('CPU_REF_N')}; budget {env.get('BUDGET') or 'none'} s, "
         f"{run['elapsed_s']:.0f} s used). Device: {dev.get('nvidia_smi') or name}; torch {dev.get('torch')} "
         f"(CUDA {dev.get('torch_cuda')}), torchaudio {dev.get('torchaudio')}, numpy {dev.get('numpy')}, "
         f"Python {dev.get('python')}, {dev.get('cpu_count')} CPU cores. Raw figures: `gpu.json`, logs: `gpu.log`.", "",
         "| step | status | seconds | figures |", "|---|---|---:|---|"]
for s in steps:
    st = run["steps"][s]
    summ = (st.get("figures") or {}).get("summary") or st.get("reason") or ""
    if not summ and st.get("log_tail", "").strip():          # skipped or failed: say why
        summ = st["log_tail"].strip().splitlines()[-1][:200]
    lines.append(f"| {s} | {st.get('status', '?')} | {st.get('wall_s', '')} | {summ.replace('|', '/')} |")
if "features_speedup" in run:
    lines += ["", f"Features: CUDA {run['features_speedup']}× the CPU on the same clips ({fc['clips_per_s']} vs "
              f"{fp['clips_per_s']} clips/s; each a fresh process: imports, CUDA start-up and decoding included)."]
rows = []
for method in ("umap", "tsne"):
    g, c = fig.get(f"torchdr_{method}", {}), fig.get(f"cpu_{method}", {})
    if g or c:
        cell = lambda f: (f"{f['points']:,} points, {f['seconds']} s, {f['accuracy_10nn']}" if f.get("points") else "—")
        rows.append(f"| {method} | {cell(g)} | {cell(c)} |")
if rows:
    lines += ["", "10-NN accuracy of the maps (synthetic: 20 Gaussian clusters in 80-d; scored on at most 20,000 "
              "points each):", "", "| method | TorchDR: points, seconds, accuracy | CPU engines (a sample) |",
              "|---|---|---|", *rows]
section = "\n".join(lines) + "\n"
with open(os.path.join(out_dir, "gpu.md"), "w") as fh:
    fh.write(section)
print(section)
print(f"figures: {out_dir}/gpu.json, gpu.md, gpu.log", file=sys.stderr)
if append_to and mode == "real":
    with open(append_to, "a") as fh:
        fh.write("\n" + section)
    print(f"appended to {append_to}", file=sys.stderr)
