#!/usr/bin/env python3
"""Is this wheelhouse usable by this Python? The checks `benchmarks/gpu.sh --offline` makes.

    python tools/wheelcheck.py before DIR   # before installing: exists, complete, right Python,
                                            # and what it assumed present is here (torch...)
    PYTHONPATH=SITE python tools/wheelcheck.py after DIR   # after `pip install --target SITE`:
                                            # every requirement of klustr_gpu met, versions too

Each prints nothing and exits 0 when all is well, else prints one line saying what is wrong and
what to do, and exits 2. Standard library only, plus ``packaging`` (or the copy pip vendors), so
it runs on the bare host Python of a machine with no network, before anything is installed.
``tools/wheelhouse.py`` (which writes the wheelhouse) shares its requirement-graph walk.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Iterable

MANIFEST = "klustr-wheelhouse.json"
LOCK = "requirements.lock"

try:  # packaging is on nearly every Python that has pip; pip vendors a copy otherwise
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pragma: no cover - depends on the host
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.tags import sys_tags  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]


class WheelhouseError(Exception):
    """One line: what is wrong with the wheelhouse and what to do."""


# -- the requirement graph ----------------------------------------------------------------------
Lookup = Callable[[str], "tuple[str, list[str]] | None"]   # name -> (version, Requires-Dist lines)


def applies(req: Requirement, env: dict, extra: str = "") -> bool:
    """Whether ``req``'s marker holds in ``env`` for the requesting package's ``extra``."""
    return req.marker is None or req.marker.evaluate(dict(env, extra=extra))


def walk(roots: Iterable[tuple[str, str]], lookup: Lookup, env: dict, *, exclude: Iterable[str] = (),
         prune: dict[str, Iterable[str]] | None = None):
    """The packages ``roots`` need in the environment ``env`` (marker values), following each
    package's Requires-Dist with the extras asked of it.

    ``roots``: ``(requirement, extra)`` pairs, ``extra`` being the extra of the root project under
    which the requirement is listed ("" for none). Names in ``exclude`` are not followed: what
    is asked of them is collected instead. ``prune`` {package: names} drops those requirements
    of that package (the app stack of klustr_gpu, say). Returns ``(found, excluded, missing)``:
    ``found`` {name: (version, extras)}, ``excluded`` {name: [requirement, ...]} and ``missing``
    [(requirement, asked by, version found or None)] for requirements that ``lookup`` cannot
    meet (absent, or a version outside the specifier)."""
    skip = {canonicalize_name(n) for n in exclude}
    cut = {canonicalize_name(k): {canonicalize_name(n) for n in v} for k, v in (prune or {}).items()}
    found: dict[str, tuple[str, set]] = {}
    excluded: dict[str, list[str]] = {}
    missing: list[tuple[str, str, str | None]] = []
    todo = [(Requirement(r), "(root)") for r, x in roots if applies(Requirement(r), env, x)]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            excluded.setdefault(name, []).append(str(req.specifier) or "*")
            continue
        node = lookup(name)
        if node is None or (req.specifier and not req.specifier.contains(node[0], prereleases=True)):
            missing.append((str(req).split(";")[0].strip(), parent, node[0] if node else None))
            continue
        version, requires = node
        old = found.get(name)
        new_extras = set(req.extras) - (old[1] if old else set())
        if old is not None and not new_extras:
            continue
        extras = (old[1] if old else set()) | set(req.extras)
        found[name] = (version, extras)
        asked = new_extras if old is not None else {""} | extras
        for line in requires:
            dep = Requirement(line)
            if canonicalize_name(dep.name) in cut.get(name, ()):
                continue
            if any(applies(dep, env, x) for x in asked):
                todo.append((dep, name))
    return found, excluded, missing


def installed_lookup(name: str):
    """(version, Requires-Dist) of the distribution ``name`` first found on ``sys.path``."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return dist.version, list(dist.requires or [])


# -- the checks ---------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise WheelhouseError(f"wheelhouse {folder} does not exist; build it with `make wheelhouse` "
                              "(docs/gpu.md) and pass its folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise WheelhouseError(f"wheelhouse {folder} is incomplete: no {MANIFEST} (not written by "
                              "`make wheelhouse`, or its build stopped); rebuild it")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise WheelhouseError(f"wheelhouse {folder} is incomplete: {MANIFEST} is unreadable ({exc}); rebuild it")


def target_words(m: dict) -> str:
    return f"Python {m.get('python')} ({m.get('platform_label') or ', '.join(m.get('platforms') or ['this platform'])})"


def rebuild_hint() -> str:
    return f"`make wheelhouse WHEELHOUSE_ARGS='--python {platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}'`"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(folder: Path, m: dict) -> None:
    """Every wheel the manifest lists is there, whole, and installs on this Python."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if m.get("python") and str(m["python"]) != here:
        raise WheelhouseError(f"wheelhouse {folder} was built for {target_words(m)}, but this is Python {here}: "
                              f"rebuild it with {rebuild_hint()}")
    wheels = m.get("wheels") or []
    lost = [w["file"] for w in wheels if not (folder / w["file"]).is_file()]
    if lost or not wheels:
        raise WheelhouseError(f"wheelhouse {folder} is incomplete: {len(lost)} of {len(wheels)} wheels missing "
                              f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}); rebuild it")
    bad = [w["file"] for w in wheels if w.get("sha256") and sha256(folder / w["file"]) != w["sha256"]]
    if bad:
        raise WheelhouseError(f"wheelhouse {folder} is damaged: {', '.join(bad[:3])} differ from what was "
                              "downloaded (sha256); rebuild it")
    ok = set(sys_tags())
    for w in wheels:
        tags = parse_wheel_filename(w["file"])[3]
        if not tags & ok:
            raise WheelhouseError(f"wheelhouse {folder} holds {w['file']}, a wheel for another Python or platform "
                                  f"(built for {target_words(m)}; this is Python {here} on {platform.machine()}): "
                                  f"rebuild it with {rebuild_hint()}")


def check_present(folder: Path, m: dict) -> None:
    """What the wheelhouse left out because the host has it (torch, and --assume-present) is here."""
    for name, specs in sorted((m.get("assumed_present") or {}).items()):
        node = installed_lookup(name)
        need = ",".join(s for s in specs if s != "*")
        if node is None:
            raise WheelhouseError(f"this Python has no {name}, which wheelhouse {folder} assumed present: "
                                  f"install it, or rebuild the wheelhouse without it in --assume-present")
        for s in specs:
            if s != "*" and not Requirement(f"{name}{s}").specifier.contains(node[0], prereleases=True):
                raise WheelhouseError(f"this Python has {name} {node[0]}, but the wheelhouse needs {name}{need}: "
                                      f"rebuild it without {name} in --assume-present")


def check_installed(m: dict) -> None:
    """After installing: every requirement reachable from klustr_gpu (as the wheelhouse was
    built: its extras, less the app stack if left out) is met on sys.path."""
    roots = [tuple(r) for r in m.get("roots") or []]
    _, _, missing = walk(roots, installed_lookup, default_environment(), prune=m.get("pruned"))
    if missing:
        req, parent, have = missing[0]
        what = f"{req} (needed by {parent})" + (f", but {have} is installed" if have else ", not installed")
        raise WheelhouseError(f"the wheelhouse is incomplete for this Python: {what}; "
                              f"{len(missing)} requirement(s) unmet in all. Rebuild it, with fewer --assume-present")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("before", "after"):
        print("usage: wheelcheck.py before|after WHEELHOUSE", file=sys.stderr)
        return 2
    folder = Path(argv[1]).expanduser()
    try:
        m = read_manifest(folder)
        if argv[0] == "before":
            check_files(folder, m)
            check_present(folder, m)
        else:
            check_installed(m)
    except WheelhouseError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
