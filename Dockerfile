# syntax=docker/dockerfile:1
# The GPU route to the locked environment: CUDA 13 runtime on Ubuntu 24.04, uv.lock installed with the
# `cuda` extra, the determinism flags of src/balanced_pi0/determinism.py. Build and run: docs/containers.md.
#
# Every image is pinned by digest; tests/test_containers.py fails on one that is not. NVIDIA deletes old
# CUDA tags, so keep an OCI archive of the base image in the DVC remote (docs/containers.md).

# CUDA 13.0 matches torch 2.11.0's cu130 wheels and jax-cuda13-plugin; the CUDA libraries themselves come
# from the locked nvidia-* wheels, the image supplies the driver interface and the NVIDIA EGL path.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:c3fde347d52d578c84fd644bc177bc7ec333feaf11550d990da4084d7612e4c7
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.0@sha256:cdc6093146eb3ff6a40107b38f008b789e050e77ad87865e381d9917da55a168

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- builder: the locked environment --
FROM ${CUDA_IMAGE} AS builder

COPY --from=uv /uv /usr/local/bin/uv

# uv 0.13.0 installs its own pinned CPython build (checksummed in uv itself) and the venv outside /app,
# so a bind-mounted checkout at run time cannot shadow it.
ENV UV_PYTHON=3.12.15 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /app

# Dependency layer: only the lock inputs, so a source change does not reinstall 6 GB of wheels.
COPY pyproject.toml uv.lock .python-version ./
RUN uv python install "${UV_PYTHON}" \
    && uv sync --locked --extra cuda --no-dev --no-install-project

# Project layer (hatchling wants the README the metadata names).
COPY README.md ./
COPY src ./src
RUN uv sync --locked --extra cuda --no-dev --no-editable

# ---------------------------------------------------------------- runtime --
FROM ${CUDA_IMAGE} AS runtime

# Packages from the immutable noble release pocket only (noble-updates and -security are dropped), so
# the exact versions below, and every dependency apt resolves for them, never move.
# EGL/GL dispatch (glvnd) + Mesa for CPU rendering; the NVIDIA EGL driver is mounted by the NVIDIA
# container toolkit when NVIDIA_DRIVER_CAPABILITIES includes `graphics`. DejaVu for the paper's figures.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN printf '%s\n' 'Types: deb' 'URIs: http://archive.ubuntu.com/ubuntu/' 'Suites: noble' \
        'Components: main universe' 'Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg' \
        > /etc/apt/sources.list.d/ubuntu.sources \
    && rm -f /etc/apt/sources.list.d/cuda*.list \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libegl1=1.7.0-1build1 \
        libgl1=1.7.0-1build1 \
        libopengl0=1.7.0-1build1 \
        libegl-mesa0=24.0.5-1ubuntu1 \
        libgl1-mesa-dri=24.0.5-1ubuntu1 \
        fonts-dejavu-core=2.37-8 \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/ldconfig/aux-cache

# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000; replace it so the default uid matches most hosts.
ARG UID=1000
RUN userdel --remove ubuntu 2>/dev/null; useradd --create-home --uid "${UID}" --shell /bin/bash bpi0

COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv

# A fixed date for every time stamp a build or a run writes (BuildKit's layer times with
# rewrite-timestamp, tar, typst). Pass the commit's date: --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct).
ARG SOURCE_DATE_EPOCH=1763856000
# The determinism environment: keep equal to balanced_pi0.determinism.DETERMINISM_ENV (a test checks).
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    XLA_FLAGS="--xla_gpu_deterministic_ops=true --xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=AVX2 --xla_cpu_enable_platform_dependent_math=false --xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false" \
    ATEN_CPU_CAPABILITY=avx2 \
    ONEDNN_MAX_CPU_ISA=AVX2 \
    MKL_CBWR=COMPATIBLE \
    OPENBLAS_CORETYPE=Haswell \
    OMP_NUM_THREADS=1 \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    NVIDIA_TF32_OVERRIDE=0 \
    PYTHONHASHSEED=0 \
    MUJOCO_GL=egl \
    PYOPENGL_PLATFORM=egl \
    HF_HUB_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PATH=/opt/venv/bin:${PATH}

# What uv.lock installs, stated for `docker inspect` (a test holds these equal to uv.lock).
LABEL balanced_pi0.python=3.12.15 \
      balanced_pi0.torch=2.11.0 \
      balanced_pi0.jax=0.11.2 \
      balanced_pi0.cuda=13.0

USER ${UID}
# The checkout (with .dvc/ and params.yaml) is mounted here; the DVC cache is mounted separately.
WORKDIR /workspace
CMD ["dvc", "repro"]
