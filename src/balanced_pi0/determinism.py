"""The flags that make JAX/XLA and PyTorch runs bit-reproducible: set in one place, recorded with every run.

``DETERMINISM_ENV`` is the single definition. The Dockerfile sets the same variables with ``ENV`` and
flake.nix's image and shell export them; tests/test_containers.py holds all three equal. Training calls
``apply()`` before the first computation and stores ``record()`` in its run metadata, so a result names
the environment that produced it.

Backend-neutral: jax and torch are never imported here; their versions and flags are read only when the
caller has already imported them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

#: XLA on the CPU: one Eigen thread. A multi-threaded CPU reduction can return different bits from
#: call to call (jax issue 39741); single-threaded it is bit-stable. Every token must start with
#: ``--``: XLA stops parsing at the first one that does not and silently ignores the rest (the
#: often-copied ``intra_op_parallelism_threads=1`` is such a token, and no XLA flag at all).
XLA_CPU_FLAGS = "--xla_cpu_multi_thread_eigen=false"
#: XLA on the CPU, the same code on every host. By default XLA compiles for the host's widest vector
#: ISA, lets LLVM use host-specific approximations (``rsqrt``), and hands dots and reductions to
#: YNNPACK/XNNPACK, which pick their kernels by CPUID at run time, whatever ``max_isa`` says.
#: Measured here (AVX-512 host): dropping YNNPACK changes the bits of matmuls, softmax and sums,
#: platform-independent math those of an RMS norm, and AVX-512 vs AVX2 those of a wide reduction
#: (and of two tiny-pi0 train steps). AVX2 (with FMA) is on every x86-64 server of the last decade.
#: An empty ``ynn_fusion_type`` clears the repeated field: no op goes to YNNPACK.
XLA_CPU_HOST_FLAGS = (
    "--xla_cpu_max_isa=AVX2 --xla_cpu_enable_platform_dependent_math=false "
    "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false"
)
#: XLA on the GPU: deterministic scatter/reduction kernels and autotuning-free choices.
XLA_GPU_FLAGS = "--xla_gpu_deterministic_ops=true"

#: The settings that make the CPU kernels independent of the host: every library that dispatches on
#: the CPU's instruction set is held to AVX2. They take effect only when set before the library
#: loads (torch reads ``ATEN_CPU_CAPABILITY`` and oneDNN its ISA once, OpenBLAS at numpy's import),
#: which is why ``bpi0`` applies them first thing (``cli.main``).
HOST_ENV: dict[str, str] = {
    # ATen's vectorised CPU kernels (softmax, reductions, activations): AVX2, not AVX-512.
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN (torch's GELU, convolutions): measured to change GELU's bits on AVX-512.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # MKL's conditional numerical reproducibility (torch's CPU matmuls). AVX2 is honoured on Intel
    # only; on other vendors MKL silently falls back to AUTO, so the one branch every x86-64 CPU runs
    # alike is COMPATIBLE (SSE2-level kernels).
    "MKL_CBWR": "COMPATIBLE",
    # One intra-op thread for torch's CPU kernels and the BLAS under numpy: a parallel reduction's
    # partial sums follow the thread count, so a 2-core and a 16-core host would differ. At the tiny
    # model's sizes it is also the fast choice: measured here, a torch train step took 188 ms on one
    # thread and 897 ms on two (two processes side by side oversubscribe the cores).
    "OMP_NUM_THREADS": "1",
    # NumPy's OpenBLAS (dynamic architecture): Haswell kernels, i.e. AVX2.
    "OPENBLAS_CORETYPE": "Haswell",
}

#: Set by some machines' own images because their OpenBLAS misbehaves on that CPU: a value already
#: there is kept (and reported by ``record``), never replaced.
HOST_KEEPS = frozenset({"OPENBLAS_CORETYPE"})

DETERMINISM_ENV: dict[str, str] = {
    # One value for both devices: XLA knows every flag and uses the ones of the backend it runs.
    "XLA_FLAGS": f"{XLA_GPU_FLAGS} {XLA_CPU_FLAGS} {XLA_CPU_HOST_FLAGS}",
    **HOST_ENV,
    # cuBLAS reuses workspaces across streams unless it is given a fixed configuration;
    # torch.use_deterministic_algorithms refuses to run CUDA matmuls without it.
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    # TF32 rounds fp32 matmul inputs to 10 mantissa bits on Ampere and newer: off, so fp32 means fp32.
    "NVIDIA_TF32_OVERRIDE": "0",
    # Set-iteration order of str keys (data loaders, config dumps) must not vary between processes.
    "PYTHONHASHSEED": "0",
    # Headless MuJoCo rendering: EGL (Mesa on the CPU, the NVIDIA EGL driver in the container).
    "MUJOCO_GL": "egl",
    "PYOPENGL_PLATFORM": "egl",
}


def without_host_pins() -> dict[str, str]:
    """``DETERMINISM_ENV`` as it was before the host pins: what the benchmark and the two-host test
    compare against, to show what the pins cost and that they matter."""
    env = {k: v for k, v in DETERMINISM_ENV.items() if k not in HOST_ENV}
    env["XLA_FLAGS"] = f"{XLA_GPU_FLAGS} {XLA_CPU_FLAGS}"
    return env


#: Distributions whose versions decide the bits of a run.
_RECORDED_DISTRIBUTIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "torch", "numpy", "mujoco")


def merge_xla_flags(user: str | None) -> str:
    """The determinism flags plus every other flag the user set (a forced host device count, a
    dump directory): a user flag of the same name as one of ours is replaced by ours."""
    ours = DETERMINISM_ENV["XLA_FLAGS"].split()
    names = {_flag_name(f) for f in ours}
    kept = [f for f in (user or "").split() if _flag_name(f) not in names]
    return " ".join(ours + kept)


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def apply() -> None:
    """Set ``DETERMINISM_ENV`` and, when torch is already imported, its deterministic switches.

    Call before jax, torch or numpy load: XLA reads ``XLA_FLAGS`` once, at its first use, and the
    host pins (``HOST_ENV``) are read when their library loads; ``bpi0`` calls it first thing.
    ``XLA_FLAGS`` the user set are kept beside ours (``merge_xla_flags``).
    ``PYTHONHASHSEED`` only affects interpreters started after this call (subprocesses, workers);
    the container and the flake set it for the main process.
    """
    xla_flags = merge_xla_flags(os.environ.get("XLA_FLAGS"))
    kept = {k: os.environ[k] for k in HOST_KEEPS & DETERMINISM_ENV.keys() if os.environ.get(k)}
    os.environ.update(DETERMINISM_ENV)
    os.environ.update(kept)
    os.environ["XLA_FLAGS"] = xla_flags
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_num_threads(int(DETERMINISM_ENV["OMP_NUM_THREADS"]))


def record() -> dict:
    """What a run's metadata stores: flags as set now, library versions, device. No timestamps."""
    versions = {}
    for dist in _RECORDED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "env": {key: os.environ.get(key) for key in DETERMINISM_ENV},
        "env_matches": all(_matches(k, v) for k, v in DETERMINISM_ENV.items()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": versions,
        "devices": _devices(),
        "torch_deterministic": _torch_flags(),
    }


def _matches(key: str, value: str) -> bool:
    if key in HOST_KEEPS and os.environ.get(key):  # the machine's own value, kept on purpose
        return True
    if key == "XLA_FLAGS":  # ours are all set (the user's may be there too)
        return set(value.split()) <= set(os.environ.get(key, "").split())
    return os.environ.get(key) == value


def _devices() -> dict:
    devices = {}
    jax = sys.modules.get("jax")
    if jax is not None:
        devices["jax"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
        devices["torch"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"]
        )
    return devices


def _torch_flags() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
