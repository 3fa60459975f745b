"""Zoom and pan as a person feels them: time from one wheel notch (or the end of a pan) to the
sharp picture, measured in headless Chromium by polling the map's canvas.

    .venv/bin/python benchmarks/zoom.py [--points 1000000] [--repeat 15] [--dpr 1] [--quick]
                                        [--peer /path/to/other/checkout] [--no-plot-peer]
                                        [--json benchmarks/out/zoom.json]

The project: the demo corpus (200 files, seed 0) scanned, and a frame-mode embedding of
``--points`` points (5,000 frames per file) laid out as 48 anisotropic clusters of Zipf-like
sizes over 5 % background, coloured by the files' 7 labels; built once under
``~/.cache/klustr_gpu/bench/zoom<N>``.

Each app is served in its own process, one after the other (never together), on the same
project: ``klustr serve`` of this checkout; the peer, the map of the app before issue 15
(``views.fast_raster``: a HoloViews DynamicMap re-rasterising on Bokeh's range and size streams,
which Bokeh fires after its 500 ms level-of-detail timeout) at the new map's size, served by Panel; and with ``--peer CHECKOUT`` that
checkout's ``klustr serve`` (e.g. the main branch before this work). Each is driven by Playwright in a 1400x900 page (``--dpr`` device pixels per CSS pixel).
The largest canvas in the page (shadow roots included) is polled every few milliseconds: a hash
of its pixels with a timestamp on the page's clock. After one wheel notch at a point of the map
(zooming in and out in turn) or a drag of 160 px in 8 steps, the page is left alone until the
canvas has not changed for 2.5 s; the *sharp* time is the first poll whose hash equals that
final one, measured from the wheel event's (or the pointer-up's) ``timeStamp``; the *first
change* is the first poll that differs from before (the stretched old picture). For this
checkout the page's own records split each picture's time into request, server render, encode,
transfer and paint. Prints a markdown table; ``--json`` writes every measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("KLUSTR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required"]
VIEWPORT = {"width": 1400, "height": 900}
SETTLE_S = 2.5

FIND_CANVAS = """() => {
  const all = [];
  const walk = (root) => { for (const e of root.querySelectorAll('*')) {
      if (e.tagName === 'CANVAS') all.push(e);
      if (e.shadowRoot) walk(e.shadowRoot); } };
  walk(document);
  let best = null;
  for (const c of all) { const r = c.getBoundingClientRect();
    if (r.width * r.height > 0 && (!best || c.width * c.height > best.width * best.height)) best = c; }
  if (!best) return null;
  window.__probe = best;
  const r = best.getBoundingClientRect();
  return {left: r.left, top: r.top, width: r.width, height: r.height, pw: best.width, ph: best.height};
}"""

START_POLL = """() => {
  const c = window.__probe, ctx = c.getContext('2d', {willReadFrequently: true});
  const hash = () => { const d = new Uint32Array(ctx.getImageData(0, 0, c.width, c.height).data.buffer);
    let h = 2166136261 >>> 0; for (let i = 0; i < d.length; i += 3) h = Math.imul(h ^ d[i], 16777619) >>> 0;
    return h; };
  window.__polls = [[performance.now(), hash()]];
  window.__t0 = null;
  const mark = (e) => { if (window.__t0 === null) window.__t0 = e.timeStamp; };
  window.__mark = mark;
  window.addEventListener('wheel', mark, {capture: true});
  window.addEventListener('pointerup', mark, {capture: true});
  window.addEventListener('mouseup', mark, {capture: true});
  window.__stop = false;
  const loop = () => { if (window.__stop) return; window.__polls.push([performance.now(), hash()]); setTimeout(loop, 8); };
  setTimeout(loop, 8);
}"""

STOP_POLL = """() => { window.__stop = true;
  for (const t of ['wheel', 'pointerup', 'mouseup']) window.removeEventListener(t, window.__mark, {capture: true});
  return {t0: window.__t0, polls: window.__polls}; }"""

STATS = """() => { const m = document.querySelector('.klustr-map') || (() => {
    let f = null; const walk = (r) => { for (const e of r.querySelectorAll('*')) {
      if (e.classList && e.classList.contains('klustr-map')) f = e; if (e.shadowRoot) walk(e.shadowRoot); } };
    walk(document); return f; })();
  return m && m.klustrStats ? JSON.parse(JSON.stringify(m.klustrStats)) : []; }"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the project ------------------------------------------------------------------------------
def layout(n: int, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in 48 anisotropic clusters (Zipf-like sizes, each owned by one label) over
    5 % uniform background; ``labels[i]`` (0..6) picks the clusters point i may join."""
    rng = np.random.default_rng(seed)
    k = 48
    centres = rng.uniform(-40, 40, (k, 2))
    owner = np.arange(k) % 7
    size = 1.0 / np.arange(1, k + 1) ** 0.8
    x = np.empty(n, np.float32)
    y = np.empty(n, np.float32)
    for lab in range(7):
        idx = np.flatnonzero(labels == lab)
        mine = np.flatnonzero(owner == lab)
        c = rng.choice(mine, size=len(idx), p=size[mine] / size[mine].sum())
        ang = rng.uniform(0, np.pi, k)[c]
        a = rng.uniform(0.8, 4.0, k)[c] * rng.standard_normal(len(idx))
        b = rng.uniform(0.3, 1.5, k)[c] * rng.standard_normal(len(idx))
        x[idx] = centres[c, 0] + a * np.cos(ang) - b * np.sin(ang)
        y[idx] = centres[c, 1] + a * np.sin(ang) + b * np.cos(ang)
    bg = rng.random(n) < 0.05
    x[bg] = rng.uniform(-50, 50, bg.sum())
    y[bg] = rng.uniform(-50, 50, bg.sum())
    return x, y


def build_project(n: int, files: int = 200) -> Path:
    sys.path.insert(0, str(REPO))
    from klustr_gpu import demo_corpus, scan
    from klustr_gpu.store import Project

    base = Path.home() / ".cache" / "klustr_gpu" / "bench" / f"zoom{n}"
    proj = base / "project"
    if (proj / "embeddings" / "frames.parquet").exists():
        return proj
    lib = base / "library"
    log(f"building {proj} ({n:,} points)")
    demo_corpus(lib, n=files, seed=0, progress=False)
    scan(lib, proj, labels=lib / "labels.csv", progress=False)
    p = Project(proj)
    man = p.read_manifest()
    man = man[man["status"] == "ok"].reset_index(drop=True)
    reps = -(-n // len(man))
    fid = np.repeat(man["id"].to_numpy(), reps)[:n]
    lab = np.repeat(man["label"].to_numpy(), reps)[:n]
    frame = np.tile(np.arange(reps), len(man))[:n]
    codes = pd.Categorical(lab).codes
    x, y = layout(n, codes % 7)
    df = pd.DataFrame({"id": [f"{f}:{i}" for f, i in zip(fid, frame)], "file_id": fid,
                       "start": frame * 0.01, "x": x, "y": y, "label": lab})
    p.write_embedding("frames", df, {"method": "fake", "n_points": n})
    return proj


# -- one app in Chromium ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PLOT_APP = """
import panel as pn
from klustr_gpu.render.data import load_map
from klustr_gpu.render.views import fast_raster, style
data = load_map({project!r})
plot = style(fast_raster(data), data, hover=False).opts(responsive=False, width=1020, height=884)
pn.serve(plot, port={port}, address="127.0.0.1", show=False, websocket_origin=["127.0.0.1:{port}"])
"""


def start_server(checkout: Path, project: Path, logfile: Path, *, plot: bool = False) -> tuple[subprocess.Popen, int]:
    port = free_port()
    code = (PLOT_APP.format(project=str(project), port=port) if plot
            else "from klustr_gpu.render.server import serve; from klustr_gpu.store import Project; "
                 f"serve(Project({str(project)!r}), port={port})")
    env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=open(logfile, "wb"), stderr=subprocess.STDOUT,
                            env=env, cwd=str(checkout))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server of {checkout} exited: {logfile.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            return proc, port
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"server of {checkout} did not start")


def settle(page, t0_wait: float = SETTLE_S, limit: float = 20.0) -> dict:
    """Wait until the canvas has not changed for ``t0_wait`` s; returns the polls."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.25)
        last = page.evaluate("() => { const p = window.__polls; let i = p.length - 1;"
                             " while (i > 0 && p[i - 1][1] === p[p.length - 1][1]) i--;"
                             " return [performance.now() - p[i][0], p.length]; }")
        if last[0] >= t0_wait * 1000:
            break
    return page.evaluate(STOP_POLL)


def measure(polls: dict) -> dict | None:
    t0, p = polls["t0"], polls["polls"]
    if t0 is None or len(p) < 2:
        return None
    before = p[0][1]
    final = p[-1][1]
    after = [(t, h) for t, h in p if t >= t0]
    first = next((t for t, h in after if h != before), None)
    sharp = next((t for t, h in after if h == final), None)
    return {"first_change_s": None if first is None else (first - t0) / 1000,
            "sharp_s": None if sharp is None else (sharp - t0) / 1000, "changed": final != before, "t0": t0}


def drive(url: str, repeat: int, dpr: float, browser) -> dict:
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=dpr)
    page.set_default_timeout(120_000)
    t = time.monotonic()
    page.goto(url, wait_until="load")
    box = None
    while time.monotonic() - t < 300 and not box:
        box = page.evaluate(FIND_CANVAS)
        if box and box["width"] < 300:
            box = None
        time.sleep(0.5)
    if not box:
        raise SystemExit(f"no map canvas at {url}")
    page.evaluate(START_POLL)
    settle(page, 3.0, 120)
    load_s = time.monotonic() - t
    cx, cy = box["left"] + box["width"] / 2, box["top"] + box["height"] / 2
    rng = np.random.default_rng(1)
    zoom, pan = [], []
    for i in range(repeat):
        px = cx + rng.uniform(-0.2, 0.2) * box["width"]
        py = cy + rng.uniform(-0.2, 0.2) * box["height"]
        page.mouse.move(px, py)
        time.sleep(0.3)
        page.evaluate(START_POLL)
        page.mouse.wheel(0, -100 if i % 2 == 0 else 100)
        m = measure(settle(page))
        if m:
            zoom.append(m)
        page.mouse.move(px, py)
        page.evaluate(START_POLL)
        page.mouse.down()
        for s in range(1, 9):
            page.mouse.move(px + 20 * s * (1 if i % 2 else -1), py + 8 * s, steps=1)
            time.sleep(0.016)
        page.mouse.up()
        m = measure(settle(page))
        if m:
            pan.append(m)
    stats = page.evaluate(STATS)
    page.close()
    return {"load_s": load_s, "zoom": zoom, "pan": pan, "canvas": box, "pictures": stats}


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(name: str, r: dict) -> dict:
    return {"app": name,
            "zoom_sharp_s": median(m["sharp_s"] for m in r["zoom"]),
            "zoom_first_s": median(m["first_change_s"] for m in r["zoom"]),
            "pan_sharp_s": median(m["sharp_s"] for m in r["pan"]),
            "pan_first_s": median(m["first_change_s"] for m in r["pan"]),
            "n": (len(r["zoom"]), len(r["pan"])), "canvas_px": (r["canvas"]["pw"], r["canvas"]["ph"])}


def breakdown(pictures: list[dict]) -> dict:
    """Median milliseconds of this checkout's pictures: fetch (request to the last byte), the
    server's queue (a render of the same session still running), render and encode, the time
    to the response headers less those (the request's way to the server and the headers' way
    back), the body's transfer, paint (bytes to canvas), and bytes."""
    def server(p, key):
        for part in p.get("server", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if name == key and dur:
                return float(dur)
        return None
    rows = [p for p in pictures if p.get("fetch_ms") is not None]
    out = {"fetch_ms": median(p["fetch_ms"] for p in rows),
           "queue_ms": median(server(p, "queue") for p in rows),
           "render_ms": median(server(p, "render") for p in rows),
           "encode_ms": median(server(p, "encode") for p in rows),
           "to_headers_ms": median(p.get("headers_ms") for p in rows),
           "body_ms": median(p.get("body_ms") for p in rows),
           "paint_ms": median(p["paint_ms"] for p in rows),
           "bytes": median(p["bytes"] for p in rows), "n": len(rows)}
    parts = [out[k] for k in ("to_headers_ms", "queue_ms", "render_ms", "encode_ms")]
    if None not in parts:
        out["request_and_response_ms"] = parts[0] - sum(parts[1:])   # browser -> server -> headers back
    return out


def gesture_breakdown(gestures: list[dict], pictures: list[dict]) -> dict:
    """Median milliseconds from each gesture's event (a wheel notch, a pointer-up) to its sharp
    picture, split: the event to the request of the last picture drawn for it, that request to
    its response headers (the server's queue, render and encode within), the body, the paint
    (unpack, bitmap, draw), and the drawn picture to the poll that saw it."""
    rows = []
    for g in gestures:
        if g.get("sharp_s") is None or g.get("t0") is None:
            continue
        seen = g["t0"] + 1000 * g["sharp_s"]
        drawn = [p for p in pictures if p.get("t_drawn") is not None and g["t0"] <= p["t_drawn"] <= seen]
        if not drawn:
            continue
        p = max(drawn, key=lambda q: q["t_drawn"])
        rows.append({"event_to_request": p["t0"] - g["t0"], "request_to_headers": p["headers_ms"],
                     "body": p["body_ms"], "paint": p["paint_ms"], "drawn_to_seen": seen - p["t_drawn"],
                     "total": 1000 * g["sharp_s"]})
    return {k: median(r[k] for r in rows) for k in (rows[0] if rows else {})} | {"n": len(rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--dpr", type=float, default=1.0)
    ap.add_argument("--peer", type=Path, default=None, help="another checkout's `klustr serve` to measure in the same run")
    ap.add_argument("--no-plot-peer", action="store_true",
                    help="skip the peer: the earlier app's map (views.fast_raster on a Bokeh plot) served by Panel")
    ap.add_argument("--quick", action="store_true", help="200,000 points, 5 notches and pans")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "out" / "zoom.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.repeat = 200_000, 5
    from playwright.sync_api import sync_playwright

    project = build_project(args.points)
    out_dir = REPO / "benchmarks" / "out"
    out_dir.mkdir(exist_ok=True)
    apps = [("klustr serve (this checkout)", REPO, False)]
    if not args.no_plot_peer:
        apps.append(("the earlier app's map (HoloViews DynamicMap on Bokeh, views.fast_raster)", REPO, True))
    if args.peer:
        apps.append((f"klustr serve of {args.peer}", args.peer, False))
    results = {"points": args.points, "dpr": args.dpr, "loadavg_before": os.getloadavg(), "apps": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for name, checkout, plot in apps:
            proc, port = start_server(checkout, project, out_dir / f"zoom-server-{len(results['apps'])}.log",
                                      plot=plot)
            try:
                log(f"{name}: serving on {port}")
                r = drive(f"http://127.0.0.1:{port}/", args.repeat, args.dpr, browser)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            r.update(summary(name, r))
            if r["pictures"]:
                r["breakdown"] = breakdown(r["pictures"])
                r["zoom_breakdown"] = gesture_breakdown(r["zoom"], r["pictures"])
                r["pan_breakdown"] = gesture_breakdown(r["pan"], r["pictures"])
            results["apps"].append(r)
            log(json.dumps({k: r[k] for k in ("app", "zoom_sharp_s", "pan_sharp_s", "zoom_first_s", "pan_first_s",
                                              "n", "canvas_px")}))
        browser.close()
    results["loadavg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"\n{args.points:,} points, DPR {args.dpr:g}, load {results['loadavg_before'][0]:.1f} -> "
          f"{results['loadavg_after'][0]:.1f}\n")
    print("| app | wheel notch → sharp (median s) | pan end → sharp (median s) | first change after notch / pan (s) | canvas px |")
    print("|---|---:|---:|---:|---|")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for r in results["apps"]:
        print(f"| {r['app']} | {fmt(r['zoom_sharp_s'])} | {fmt(r['pan_sharp_s'])} | "
              f"{fmt(r['zoom_first_s'])} / {fmt(r['pan_first_s'])} | {r['canvas_px'][0]}x{r['canvas_px'][1]} |")
    ours = results["apps"][0]
    for r in results["apps"][1:]:
        if None not in (r["zoom_sharp_s"], r["pan_sharp_s"], ours["zoom_sharp_s"], ours["pan_sharp_s"]):
            print(f"\nagainst {r['app']}: wheel notch {r['zoom_sharp_s'] / ours['zoom_sharp_s']:.1f}x, "
                  f"pan {r['pan_sharp_s'] / ours['pan_sharp_s']:.1f}x sooner sharp")
    for r in results["apps"]:
        if r.get("breakdown"):
            print(f"\nwhere a picture's time goes ({r['app']}, medians over {r['breakdown']['n']} pictures): "
                  + ", ".join(f"{k} {v:,.1f}" for k, v in r["breakdown"].items() if k != "n" and v is not None))
        for kind in ("zoom", "pan"):
            b = r.get(f"{kind}_breakdown")
            if b and b["n"]:
                print(f"\n{kind}: event to sharp picture, ms (medians over {b['n']}): "
                      + ", ".join(f"{k.replace('_', ' ')} {v:,.1f}" for k, v in b.items() if k != "n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
