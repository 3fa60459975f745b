#!/usr/bin/env python3
"""Build a wheelhouse: klustr_gpu's own wheel and one wheel of each runtime dependency, for a
target Python and platform, so a machine with no package index (a GPU node) can install it.

    python tools/wheelhouse.py                                   # this Python, this platform
    python tools/wheelhouse.py --python 3.12 --platform manylinux-x86_64 \\
        --assume-present device-h200 --max-mib 60                # the lent H200 (docs/gpu.md)

Left out, always: torch, torchaudio (the host brings its own CUDA build), cuML and CuPy. Left
out unless ``--with-app``: the app's Panel / Bokeh / HoloViews stack, which the GPU checks never
import. Added: TorchDR and what ``pytest -m gpu`` imports (pytest, librosa). ``--assume-present``
leaves out more, packages the target already has: names, ``name==version``, ``@FILE`` or a preset
(``tools/wheelhouse-presets/NAME.txt``); a ``name==version`` also keeps the rest compatible with
that version.

pip does the work: ``pip install --dry-run --report`` resolves the set for the target
(``--python-version``, ``--platform``, ``--implementation``, ``--only-binary=:all:``; torch and
torchaudio stand in as empty stub wheels, so their CUDA wheels are never fetched), then
``pip download --no-deps`` fetches exactly the pinned versions. pip evaluates environment markers
for the running Python, not the target, so the set is re-walked with the target's markers
(``wheelcheck.walk``) and anything the target needs beyond it is resolved in. By default every
package is pinned to the version this Python has installed (what the test suite ran with);
``--latest`` lets pip choose. Writes DEST/*.whl, DEST/requirements.lock (``name==version``) and
DEST/klustr-wheelhouse.json (what ``benchmarks/gpu.sh --offline`` checks before installing), all
at once: a failed build leaves the previous wheelhouse as it was.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheelcheck as wc  # noqa: E402 - beside this file

REPO = Path(__file__).resolve().parents[1]
PRESETS = Path(__file__).resolve().parent / "wheelhouse-presets"
NEVER = ("torch", "torchaudio", "cupy", "cupy-cuda11x", "cupy-cuda12x", "cupy-cuda13x", "cuml", "cuml-cu11",
         "cuml-cu12", "cuml-cu13", "dask-cuda")
STUBBED = ("torch", "torchaudio")          # stand-ins during resolution (no CUDA wheels fetched)
APP = ("panel", "bokeh", "holoviews")      # `klustr serve` only
GPU_TEST = ("pytest", "librosa")           # of the test extra: what the gpu-marked test modules import
EXTRAS = ("torchdr", "test")
STUB_LOCAL = "wheelhousestub"


class BadInput(Exception):
    """A usage error: one line, exit 2, before any work."""


# -- the target -----------------------------------------------------------------------------------
def manylinux_tags(arch: str, glibc: int) -> list[str]:
    """pip matches --platform exactly: every manylinux tag a glibc-2.``glibc`` machine accepts."""
    first = 17 if arch == "aarch64" else 5
    tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc, first - 1, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    return tags + [f"{k}_{arch}" for k, m in legacy.items() if m <= glibc and m >= first]


def linux_env(python: str, arch: str) -> dict:
    return {"implementation_name": "cpython", "implementation_version": f"{python}.0", "os_name": "posix",
            "platform_machine": arch, "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": f"{python}.0", "platform_python_implementation": "CPython",
            "python_version": python, "sys_platform": "linux"}


def target(args) -> dict:
    """pip options, marker environment and words for the target; BadInput if it makes no sense."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    python = args.python or here
    if not re.fullmatch(r"3\.\d{1,2}", python) or int(python.split(".")[1]) < 10:
        raise BadInput(f"--python {python}: give a CPython version as X.Y, 3.10 or newer (klustr_gpu needs >= 3.10)")
    if not re.fullmatch(r"2\.\d{1,2}", args.glibc) or int(args.glibc.split(".")[1]) < 17:
        raise BadInput(f"--glibc {args.glibc}: give the target's glibc as 2.N, N >= 17")
    names = [p.lower().replace(" ", "-").replace("x86-64", "x86_64") for p in (args.platform or ["native"])]
    opts: list[str] = []
    if names == ["native"]:
        env = wc.default_environment()
        env.update(python_version=python, python_full_version=env["python_full_version"] if python == here
                   else f"{python}.0")
        label = "this platform"
        platforms: list[str] = []
    else:
        platforms = []
        arch = None
        for p in names:
            m = re.fullmatch(r"(?:many)?linux[-_](x86_64|aarch64)", p)
            if m:
                arch = m.group(1)
                platforms += manylinux_tags(arch, int(args.glibc.split(".")[1]))
            elif re.fullmatch(r"(manylinux|musllinux)_\d+_\d+_(x86_64|aarch64)|manylinux\d+_(x86_64|aarch64)", p):
                arch = "x86_64" if p.endswith("x86_64") else "aarch64"
                platforms.append(p)
            else:
                raise BadInput(f"--platform {p}: use native, manylinux-x86_64, manylinux-aarch64 or a pip platform "
                               "tag such as manylinux_2_28_x86_64")
        env = linux_env(python, arch)
        label = f"manylinux {arch}, glibc {args.glibc}"
        for t in platforms:
            opts += ["--platform", t]
    if python != here or platforms:
        opts = ["--python-version", python, "--implementation", "cp"] + opts
    return {"python": python, "opts": opts, "env": env, "platforms": platforms, "label": label}


def assumed(specs: list[str]) -> dict[str, str | None]:
    """{canonical name: pinned version or None} from --assume-present values."""
    out: dict[str, str | None] = {}
    for spec in specs:
        if spec.startswith("@") or (PRESETS / f"{spec}.txt").is_file():
            path = Path(spec[1:]).expanduser() if spec.startswith("@") else PRESETS / f"{spec}.txt"
            if not path.is_file():
                raise BadInput(f"--assume-present {spec}: no such file")
            items = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        elif re.fullmatch(r"[A-Za-z0-9][\w.\-]*(==[\w.+!\-]+)?(,[A-Za-z0-9][\w.\-]*(==[\w.+!\-]+)?)*", spec):
            items = spec.split(",")
        else:
            presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.txt")))
            raise BadInput(f"--assume-present {spec}: give names (a,b==1.2), @FILE or a preset ({presets})")
        for item in filter(None, items):
            name, _, version = item.partition("==")
            out[wc.canonicalize_name(name)] = version or None
    return out


# -- the steps ----------------------------------------------------------------------------------------
def pip(*args: str, what: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if r.returncode:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith("ERROR")] or \
            (r.stderr + r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed: " + " | ".join(lines[:3]))


def build_self(tmp: Path) -> Path:
    """klustr_gpu's wheel, built from a copy of the sources (the working tree stays clean)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "klustr_gpu", src / "klustr_gpu", ignore=shutil.ignore_patterns("__pycache__"))
    pip("wheel", "--quiet", "--no-deps", "-w", str(tmp / "self"), str(src), what="building klustr_gpu's wheel")
    return next((tmp / "self").glob("klustr_gpu-*.whl"))


def wheel_metadata(whl: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    version = re.search(r"^Version: (.+)$", meta, re.M).group(1).strip()
    return version, [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]


def make_stub(folder: Path, name: str, version: str) -> None:
    """An empty wheel that only says 'name version is installed' (for resolution only)."""
    folder.mkdir(exist_ok=True)
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: klustr-wheelhouse\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


def installed_pins(skip: set[str]) -> list[str]:
    from importlib import metadata

    pins = {}
    for d in metadata.distributions():
        name = wc.canonicalize_name(d.metadata["Name"] or "")
        if name and name not in skip and not name.startswith("nvidia-") and name not in ("klustr-gpu", "triton"):
            pins[name] = f"{name}=={d.version}"
    return sorted(pins.values())


def resolve(tmp: Path, t: dict, roots: list[str], constraints: list[str], stubs: Path, rnd: int) -> dict:
    """pip's resolution for the target: {name: (version, requires, url, sha256)}."""
    report, cons = tmp / f"report-{rnd}.json", tmp / "constraints.txt"
    cons.write_text("\n".join(constraints) + "\n")
    pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), "--target",
        str(tmp / "target"), "--only-binary=:all:", "--find-links", str(stubs), "-c", str(cons), *t["opts"], *roots,
        what=f"resolving the dependencies for Python {t['python']} ({t['label']})")
    nodes = {}
    for item in json.loads(report.read_text())["install"]:
        md, info = item["metadata"], item["download_info"]
        nodes[wc.canonicalize_name(md["name"])] = (md["version"], md.get("requires_dist") or [], info["url"],
                                                    (info.get("archive_info") or {}).get("hashes", {}).get("sha256"))
    return nodes


def plain(req: "wc.Requirement") -> str:
    """The requirement without its marker (pip would evaluate it for the running Python)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def root_requirements(requires: list[str], env: dict, exclude: set[str], with_app: bool):
    """klustr_gpu's requirements the wheelhouse serves (markers evaluated for the target) and
    the names it leaves out on purpose (the app stack, the test extra beyond GPU_TEST)."""
    kept, pruned = [], set()
    for line in requires:
        req = wc.Requirement(line)
        name = wc.canonicalize_name(req.name)
        base = wc.applies(req, env, "")
        if not (base or any(wc.applies(req, env, x) for x in EXTRAS)):
            continue
        test_only = not base and not wc.applies(req, env, "torchdr")
        if (name in APP and not with_app) or (test_only and name not in GPU_TEST):
            pruned.add(name)
        elif name not in exclude:
            kept.append(plain(req))
    names = {wc.canonicalize_name(wc.Requirement(r).name) for r in kept}
    return kept, pruned - names - set(exclude)


def stub_constraints(stubs: Path, present: dict[str, str | None]) -> list[str]:
    """Stub wheels for torch / torchaudio (the host's, or this Python's, version) and for every
    ``--assume-present name==version``; the constraints that make pip take them."""
    versions = {n: present.get(n) or (wc.installed_lookup(n) or ("2.4.0",))[0] for n in STUBBED}
    versions.update({n: v for n, v in present.items() if v})
    out = []
    for name, v in sorted(versions.items()):
        v = f"{v.split('+')[0]}+{STUB_LOCAL}"
        make_stub(stubs, name, v)
        out.append(f"{name}=={v}")
    return out


def select(self_wheel: Path, t: dict, tmp: Path, present: dict[str, str | None], *, with_app: bool, latest: bool):
    """Resolve with pip, walk the result with the target's markers, and resolve again with what
    the walk found missing, until the set is closed. Returns (chosen nodes, excluded {name:
    specifiers}, pruned names, the root)."""
    version, requires = wheel_metadata(self_wheel)
    exclude = set(NEVER) | set(present)
    roots, pruned = root_requirements(requires, t["env"], exclude, with_app)
    constraints = stub_constraints(tmp / "stubs", present)
    if not latest:
        constraints += installed_pins(exclude | set(STUBBED))
    root = (f"klustr_gpu[{','.join(EXTRAS)}]", "")
    nodes: dict = {}

    def lookup(name: str):
        if name == "klustr-gpu":
            return version, requires
        return nodes[name][:2] if name in nodes else None

    for rnd in range(3):
        nodes = resolve(tmp, t, roots, constraints, tmp / "stubs", rnd)
        found, excluded, missing = wc.walk([root], lookup, t["env"], exclude=exclude, prune={"klustr-gpu": pruned})
        if not missing:
            return {n: nodes[n] for n in found if n != "klustr-gpu"}, excluded, sorted(pruned), root
        roots += [req for req, _, _ in missing if req not in roots]
    raise RuntimeError("the target needs " + ", ".join(m[0] for m in missing) + ", which pip did not resolve")


def download(tmp: Path, t: dict, chosen: dict) -> Path:
    """``pip download --no-deps`` of exactly the pinned versions; hashes checked against the resolution."""
    lock = tmp / "download.txt"
    lock.write_text("".join(f"{n}=={v[0]}\n" for n, v in sorted(chosen.items())))
    out = tmp / "out"
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(out), *t["opts"], "-r", str(lock),
        what="downloading the wheels")
    got = {}
    for f in out.glob("*.whl"):
        name, ver = wc.parse_wheel_filename(f.name)[:2]
        got[wc.canonicalize_name(name)] = f
        want = chosen.get(wc.canonicalize_name(name))
        if want is None or wc.Version(want[0]) != ver:
            raise RuntimeError(f"pip downloaded {f.name}, which the resolution did not choose")
        if want[3] and wc.sha256(f) != want[3]:
            raise RuntimeError(f"{f.name} differs from the file pip resolved (sha256)")
    lost = sorted(set(chosen) - set(got))
    if lost:
        raise RuntimeError(f"pip downloaded no wheel for {', '.join(lost)}")
    return out


def write(dest: Path, out: Path, self_wheel: Path, t: dict, chosen, excluded, pruned, root, args) -> dict:
    """Manifest and lock beside the wheels, then the folder swapped in whole."""
    shutil.copy2(self_wheel, out / self_wheel.name)
    wheels = [{"file": f.name, "name": wc.canonicalize_name(wc.parse_wheel_filename(f.name)[0]),
               "version": str(wc.parse_wheel_filename(f.name)[1]), "bytes": f.stat().st_size,
               "sha256": wc.sha256(f)} for f in sorted(out.glob("*.whl"))]
    m = {"format": 1, "created": dt.datetime.now().isoformat(timespec="seconds"), "python": t["python"],
         "implementation": "cp", "platforms": t["platforms"], "platform_label": t["label"],
         "set": "gpu+app" if args.with_app else "gpu", "roots": [list(root)], "pruned": {"klustr-gpu": pruned},
         "assumed_present": {n: sorted(set(v)) for n, v in sorted(excluded.items()) if n not in NEVER or n in STUBBED},
         "wheels": wheels, "bytes": sum(w["bytes"] for w in wheels),
         "command": "python tools/wheelhouse.py " + shlex.join(args.argv)}
    (out / wc.MANIFEST).write_text(json.dumps(m, indent=1) + "\n")
    (out / wc.LOCK).write_text(
        f"# klustr_gpu wheelhouse for Python {t['python']} ({t['label']}), set {m['set']}; {m['created']}\n"
        f"# {m['command']}\n# install: python -m pip install --no-index --no-deps --target SITE {dest.name}/*.whl\n"
        + "".join(f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}\n" for w in wheels))
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    shutil.move(str(out), str(dest))
    shutil.rmtree(old, ignore_errors=True)
    return m


def report(m: dict, dest: Path) -> str:
    mib = m["bytes"] / 2**20
    big = sorted(m["wheels"], key=lambda w: -w["bytes"])[:6]
    lines = [f"wheelhouse {dest}: {len(m['wheels'])} wheels, {mib:.1f} MiB, for Python {m['python']} "
             f"({m['platform_label']}), set {m['set']}",
             "  largest: " + ", ".join(f"{w['name']} {w['bytes'] / 2**20:.1f} MiB" for w in big),
             "  left out (the host must have them): " + ", ".join(sorted(m["assumed_present"])),
             f"  lock: {dest / wc.LOCK}"]
    return "\n".join(lines)


def parse(argv: list[str]):
    p = argparse.ArgumentParser(prog="wheelhouse.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=str(REPO / "wheelhouse"), help="output folder (default: wheelhouse/)")
    p.add_argument("--python", help="target Python X.Y (default: this one)")
    p.add_argument("--platform", action="append", metavar="NAME",
                   help="native (default), manylinux-x86_64, manylinux-aarch64, or pip platform tags (repeatable)")
    p.add_argument("--glibc", default="2.28", help="with a manylinux platform: the target's glibc (default 2.28)")
    p.add_argument("--assume-present", action="append", default=[], metavar="SPEC",
                   help="leave these out: names (a,b==1.2), @FILE, or a preset: "
                        + ", ".join(sorted(x.stem for x in PRESETS.glob("*.txt"))))
    p.add_argument("--with-app", action="store_true", help="also the app's Panel/Bokeh/HoloViews stack")
    p.add_argument("--latest", action="store_true", help="newest versions, not this Python's installed ones")
    p.add_argument("--max-mib", type=float, help="fail (exit 1) when the wheels add up to more")
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    dest = Path(args.dest).expanduser().resolve()
    try:
        t = target(args)
        present = assumed(args.assume_present)
        if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / wc.MANIFEST).exists())):
            raise BadInput(f"--dest {dest} exists and is not a wheelhouse: choose a new or empty folder")
    except BadInput as exc:
        print(f"wheelhouse.py: {exc}", file=sys.stderr)
        return 2
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheelhouse-", dir=dest.parent) as tmp_s:
        tmp = Path(tmp_s)
        try:
            print("[1/4] building klustr_gpu's wheel", file=sys.stderr, flush=True)
            self_wheel = build_self(tmp)
            print(f"[2/4] resolving for Python {t['python']} ({t['label']})", file=sys.stderr, flush=True)
            chosen, excluded, pruned, root = select(self_wheel, t, tmp, present, with_app=args.with_app,
                                                    latest=args.latest)
            print(f"[3/4] downloading {len(chosen)} wheels", file=sys.stderr, flush=True)
            out = download(tmp, t, chosen)
            print("[4/4] writing the lock and the manifest", file=sys.stderr, flush=True)
            m = write(dest, out, self_wheel, t, chosen, excluded, pruned, root, args)
        except (RuntimeError, OSError) as exc:
            print(f"wheelhouse.py: {exc}", file=sys.stderr)
            return 1
    print(report(m, dest))
    if args.max_mib is not None and m["bytes"] > args.max_mib * 2**20:
        print(f"wheelhouse.py: {m['bytes'] / 2**20:.1f} MiB is over --max-mib {args.max_mib:g}: leave more out "
              "with --assume-present", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
