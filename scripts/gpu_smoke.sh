#!/usr/bin/env bash
# GPU smoke test of the pinned environment: a few optimiser steps of the full-size pi0 (PaliGemma 2B +
# 300M expert, So400m/14, bf16) in both backends, each run twice in fresh processes with the determinism
# flags of balanced_pi0.determinism; the exported params.npz of the two runs must hash the same.
#
#   scripts/gpu_smoke.sh                      # uv's locked env with the cuda extra
#   PYTHON=python scripts/gpu_smoke.sh        # inside the container (the venv is on PATH)
#   scripts/gpu_smoke.sh --size tiny          # the same plumbing on a CPU, in minutes
#
# Options: --size pi0|dummy|tiny (pi0), --steps N (3), --batch-size N (2), --out DIR (a temp dir),
# --backends "jax torch" (both).
# Prints one JSON line per run and a verdict; exits 1 if any backend's two runs differ.
set -euo pipefail
cd "$(dirname "$0")/.."

size=pi0 steps=3 batch=2 out="" backends="jax torch"
while (($#)); do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    *) echo "gpu_smoke: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
read -r -a python <<<"${PYTHON:-uv run --locked --extra cuda python}"

# The determinism environment, from its one definition, set before any interpreter starts.
eval "$("${python[@]}" -c 'import shlex
from balanced_pi0.determinism import DETERMINISM_ENV
for key, value in DETERMINISM_ENV.items():
    print(f"export {key}={shlex.quote(value)}")')"

run_once() {
  "${python[@]}" - "$@" <<'PY'
import hashlib, json, sys
from pathlib import Path

from balanced_pi0 import determinism

determinism.apply()
import numpy as np

from balanced_pi0 import backends, config, flow
from balanced_pi0.model_config import SIZES

backend_name, size, steps, batch_size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
cfg = SIZES[size]
params = config.from_dict({
    # openpi's three image inputs (base and both wrists), as its checkpoints take them
    "dataset": {"cameras": ["head", "left_wrist", "right_wrist"]},
    "model": {
        "size": size,
        "action_horizon": cfg.action_horizon,
        "max_token_len": cfg.max_token_len,
        "image_resolution": cfg.image_resolution,
        "dtype": "bfloat16" if size == "pi0" else "float32",
    },
    # No EMA copy: params, gradients and AdamW moments of 3.3B params already take ~53 GB in fp32.
    "train": {"backend": backend_name, "batch_size": batch_size, "optimizer": {"ema_decay": None}},
})
kwargs = {}
if backend_name == "torch":
    import torch

    determinism.apply()  # now that torch is imported: deterministic algorithms, no TF32
    kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
backend = backends.make_backend(params, **kwargs)
backend.init()

# One fixed synthetic batch (seeded), so the only thing that can differ between runs is the numerics.
rng = np.random.default_rng(0)
b, h, d, r = batch_size, cfg.action_horizon, cfg.action_dim, cfg.image_resolution
observation = {
    "images": {c: rng.uniform(-1, 1, (b, r, r, 3)).astype(np.float32) for c in cfg.cameras},
    "image_masks": {c: np.ones(b, dtype=bool) for c in cfg.cameras},
    "state": rng.standard_normal((b, d), dtype=np.float32),
    "tokenized_prompt": rng.integers(0, cfg.vocab_size, (b, cfg.max_token_len), dtype=np.int32),
    "tokenized_prompt_mask": np.arange(cfg.max_token_len)[None].repeat(b, 0) < cfg.max_token_len // 2,
}
actions = rng.standard_normal((b, h, d), dtype=np.float32)
action_is_pad = np.arange(h)[None].repeat(b, 0) >= h - 5 * np.arange(b)[:, None]
losses = []
for step in range(steps):
    noise, time = flow.sample_noise_time(0, step, b, h, d)
    batch = {"observation": observation, "actions": actions, "action_is_pad": action_is_pad, "noise": noise, "time": time}
    losses.append(backend.train_step(batch, step)["loss"])
backend.export(out)
digest = hashlib.sha256((out / "params.npz").read_bytes()).hexdigest()
print(json.dumps({"backend": backend_name, "size": size, "steps": steps, "losses": losses, "params_sha256": digest,
                  "record": determinism.record()}, sort_keys=True))
PY
}

status=0
for backend in $backends; do
  for run in 1 2; do
    run_once "$backend" "$size" "$steps" "$batch" "$out/$backend-$run" | tail -n 1 | tee "$out/$backend-$run.json"
  done
  first=$(sha256sum <"$out/$backend-1/params.npz")
  second=$(sha256sum <"$out/$backend-2/params.npz")
  if [ "$first" = "$second" ]; then
    echo "gpu_smoke: $backend: the two runs wrote identical params.npz (${first%% *})"
  else
    echo "gpu_smoke: $backend: the two runs DIFFER (${first%% *} vs ${second%% *})" >&2
    status=1
  fi
done
exit "$status"
