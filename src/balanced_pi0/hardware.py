"""What machine ran this: CPU model, instruction sets available and in use, cores, caches, GPUs.

The one probe of the hardware. ``bpi0 env`` stores it in ``results/environment.json`` and every
training run beside its metadata, so a reader can see when two results came from different machines.
Nothing here fails when a piece is missing (no ``/proc``, no GPU, no torch): the field is ``None``.
Backend-neutral like ``determinism``: jax and torch are read only when the caller has imported them.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

#: The extensions that decide which kernels XLA, ATen, oneDNN, MKL and OpenBLAS pick; the other
#: cpuinfo flags (virtualisation, power management) say nothing about numerical results.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

_CPUINFO = Path("/proc/cpuinfo")
_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def probe() -> dict:
    """The CPU, the instruction sets the numerical libraries use on it, and any GPU."""
    return {"cpu": cpu(), "isa_in_use": isa_in_use(), "gpu": gpu()}


def cpu() -> dict:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "model": info.get("model name") or platform.processor() or None,
        "vendor": info.get("vendor_id"),
        "family_model_stepping": _fms(info),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa_available": [f for f in ISA_FLAGS if f in flags],
        "caches": _caches(),
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (every core of one machine reports the same)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _fms(info: dict[str, str]) -> str | None:
    parts = [info.get(k) for k in ("cpu family", "model", "stepping")]
    return "/".join(parts) if all(parts) else None


def _caches() -> list[dict] | None:
    """Level, type and size of each cache of core 0: blocked kernels (Eigen, MKL) size tiles by them."""
    if not _CACHE.is_dir():
        return None
    out = []
    for index in sorted(_CACHE.glob("index*")):
        try:
            fields = {k: (index / k).read_text().strip() for k in ("level", "type", "size")}
        except OSError:
            continue
        out.append({"level": int(fields["level"]), "type": fields["type"], "size": fields["size"]})
    return out


def isa_in_use() -> dict:
    """What each library was told to use: the settings are read, and torch is asked when loaded."""
    torch = sys.modules.get("torch")
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")]
    return {
        "xla_cpu_max_isa": xla[-1].split("=", 1)[1] if xla else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


def gpu() -> dict | None:
    """Device models, driver and CUDA/cuDNN versions; ``None`` on a machine without an NVIDIA GPU."""
    torch = sys.modules.get("torch")
    devices = _nvidia_smi()
    if torch is not None and torch.cuda.is_available():
        devices = devices or [
            {"name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())
        ]
    if not devices:
        return None
    return {
        "devices": devices,
        "cuda_torch": getattr(torch.version, "cuda", None) if torch is not None else None,
        "cudnn_torch": torch.backends.cudnn.version() if torch is not None else None,
        "jax_devices": _jax_gpu_kinds(),
    }


def _nvidia_smi() -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = query.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.splitlines()]


def _jax_gpu_kinds() -> list[str] | None:
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        return [d.device_kind for d in jax.devices("gpu")]
    except RuntimeError:  # no GPU backend
        return None
