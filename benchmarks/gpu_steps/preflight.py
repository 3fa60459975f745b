"""Before any work: which device the GPU checks run on. Prints `cuda` or `cpu`; or one line
saying why not, and exit 2. `--allow-cpu` (dry runs) accepts a machine without CUDA."""
from __future__ import annotations

import sys


def verdict(allow_cpu: bool, version: str | None, cuda_build: str | None, available: bool, count: int) -> tuple[str, str]:
    """(device, problem): problem is '' when the checks can run."""
    if version is None:
        return "", "this Python has no torch: install a CUDA build of torch first (the wheelhouse never carries torch)"
    if available and count > 0:
        return "cuda", ""
    if allow_cpu:
        return "cpu", ""
    if cuda_build is None:
        return "", (f"torch {version} is a CPU-only build (torch.version.cuda is None): install a CUDA build "
                    "of torch, or pass --dry-run to exercise the steps on the CPU")
    return "", (f"torch {version} (CUDA {cuda_build}) sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?): "
                "run on a GPU machine, or pass --dry-run to exercise the steps on the CPU")


def main() -> int:
    allow_cpu = "--allow-cpu" in sys.argv[1:]
    try:
        import torch
        facts = (torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())
    except ImportError:
        facts = (None, None, False, 0)
    device, problem = verdict(allow_cpu, *facts)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    print(device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
