"""Which integer kernels will run the model: on x86 without VNNI, ONNX Runtime's u8 x s8 products
can saturate (its documentation's advice: 7-bit weights, reduce_range), elsewhere 8-bit weights are safe."""

from __future__ import annotations

import os
import platform
from pathlib import Path

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def weight_bits_for(machine: str, flags: set[str]) -> tuple[int, str]:
    """(weight bits, why) for a CPU described by its architecture and feature flags."""
    if machine.lower() in ("x86_64", "amd64", "i686", "x86"):
        vnni = sorted(flags & VNNI_FLAGS)
        if vnni:
            return 8, f"x86 CPU with {', '.join(vnni)}: 8-bit u8 x s8 products do not saturate"
        return 7, ("x86 CPU without VNNI: ONNX Runtime's u8 x s8 kernels can saturate, so weights use "
                   "7 bits (reduce_range)")
    return 8, f"{machine} CPU: 8-bit weights"


def auto_weight_bits() -> tuple[int, str]:
    return weight_bits_for(platform.machine(), cpu_flags())


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or a SLURM allocation may give
    fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
