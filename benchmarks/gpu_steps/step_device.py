"""The device: nvidia-smi's line, torch's view of the GPU, versions."""
import os
import platform

import torch

from step_common import save

fig = {"nvidia_smi": os.environ.get("NVSMI", "").strip() or None, "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "python": platform.python_version(), "cpu_count": os.cpu_count(),
       "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    fig.update(name=torch.cuda.get_device_name(0), memory_gib=round(p.total_memory / 2**30, 1),
               capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
               device_count=torch.cuda.device_count())
else:
    fig["name"] = f"CPU ({platform.processor() or platform.machine()}, no CUDA)"
try:
    import numpy
    import torchaudio
    import klustr_gpu
    fig.update(torchaudio=torchaudio.__version__, numpy=numpy.__version__,
               imported_from={m.__name__: os.path.dirname(m.__file__) for m in (torch, numpy, klustr_gpu)})
except ImportError as exc:
    fig["import_error"] = str(exc)
fig["summary"] = (f"{fig['name']}" + (f", {fig['memory_gib']} GiB" if "memory_gib" in fig else "")
                  + f"; torch {fig['torch']} (CUDA {fig['torch_cuda']}), Python {fig['python']}, {fig['cpu_count']} CPUs")
save(fig)
