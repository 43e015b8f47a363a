"""What a run measures about itself: memory, device, library versions, parameter counts."""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import sys
from typing import Any

import torch

SHARED_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
GIB = 1024**3


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers, plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*SHARED_LIBRARIES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    """The device training runs on, by name."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "memory_gib": round(props.total_memory / GIB, 2),
                "cuda": torch.version.cuda, "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    return {"type": "cpu", "name": _cpu_name(), "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.readlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_snapshot() -> dict[str, float]:
    """Peak memory so far: GPU allocated and reserved (torch's counters), or the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return {
            "gpu_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3),
            "gpu_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "gpu_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        }
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return {"cpu_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB, 3)}


def parameter_counts(model: Any) -> dict[str, Any]:
    """Trainable and total parameters, counting 4-bit packed weights at their real element count, and how many
    linear layers hold 4-bit weights (what the model really trained on, whatever a backend did with the flag)."""
    trainable, total = model.get_nb_trainable_parameters()
    linear_4bit = sum(type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
                      for m in model.modules())
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4),
            "linear_4bit_layers": linear_4bit}


def gpu_peak_and_total_gib() -> tuple[float, float]:
    """Peak allocated and total memory of GPU 0 in GiB (zeros without CUDA), for the out-of-memory message."""
    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.get_device_properties(0).total_memory / GIB
