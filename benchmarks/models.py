"""pi0 forward+backward step time: JAX (flax nnx, jitted) versus PyTorch (eager), same weights.

One step = the flow-matching loss (mean of ``compute_loss``) and the gradient of
every parameter; no optimiser, so only the model is timed. The PyTorch model is
converted from the JAX one, so both compute the same function (their losses are
printed side by side). Rounds of the two backends alternate so that drift on a
shared machine hits both alike; the fastest and the median round are reported,
with the ratio PyTorch / JAX. One thread per backend by default, for stable numbers.

    uv run python benchmarks/models.py [--size tiny] [--batch-size 8] [--steps 5] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from balanced_pi0.backends.jax import pi0 as jax_pi0
from balanced_pi0.backends.jax.params import export_params
from balanced_pi0.model_config import SIZES, WORD_VOCAB, Pi0Config
from balanced_pi0.tokenizer import WordTokenizer


def make_batch(cfg: Pi0Config, batch_size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    res, shape = cfg.image_resolution, (batch_size, cfg.action_horizon, cfg.action_dim)
    tok = WordTokenizer(cfg.max_token_len, min(cfg.vocab_size, WORD_VOCAB))
    tokens, mask = tok.tokenize_batch(["pick up the cube"] * batch_size)
    return {
        "images": {c: rng.uniform(-1, 1, (batch_size, res, res, 3)).astype(np.float32) for c in cfg.cameras},
        "image_masks": {c: np.ones(batch_size, bool) for c in cfg.cameras},
        "state": rng.normal(size=(batch_size, cfg.action_dim)).astype(np.float32),
        "tokenized_prompt": tokens,
        "tokenized_prompt_mask": mask,
        "actions": rng.normal(size=shape).astype(np.float32),
        "noise": rng.normal(size=shape).astype(np.float32),
        "time": rng.uniform(0.001, 1.0, batch_size).astype(np.float32),
    }


def jax_step_fn(model, batch):
    obs = jax_pi0.Observation(**{k: batch[k] for k in ("images", "image_masks", "state")}, **_prompt(batch))
    args = (batch["actions"], batch["noise"], batch["time"])

    @nnx.jit
    def step(model, obs, actions, noise, time):
        loss_fn = lambda m: jnp.mean(m.compute_loss(obs, actions, noise, time))  # noqa: E731
        return nnx.value_and_grad(loss_fn)(model)

    def run() -> float:
        loss, grads = step(model, obs, *args)
        jax.block_until_ready(grads)
        return float(loss)

    return run


def torch_step_fn(params: dict, cfg: Pi0Config, batch):
    import torch

    from balanced_pi0.backends.torch import pi0 as torch_pi0
    from balanced_pi0.backends.torch.convert import pi0_from_jax

    model = pi0_from_jax(dict(params), cfg)
    as_t = lambda tree: jax.tree.map(torch.from_numpy, tree)  # noqa: E731
    obs = torch_pi0.Observation(
        **as_t({k: batch[k] for k in ("images", "image_masks", "state")}), **as_t(_prompt(batch))
    )
    actions, noise, time_ = (torch.from_numpy(batch[k]) for k in ("actions", "noise", "time"))

    def run() -> float:
        model.zero_grad(set_to_none=True)
        loss = model.compute_loss(obs, actions, noise, time_).mean()
        loss.backward()
        return float(loss.detach())

    return run


def _prompt(batch) -> dict:
    return {k: batch[k] for k in ("tokenized_prompt", "tokenized_prompt_mask")}


def timed_rounds(runs: dict, steps: int, rounds: int) -> tuple[dict, dict]:
    losses = {name: run() for name, run in runs.items()}  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps)
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    args = parser.parse_args()

    cfg = SIZES[args.size]
    batch = make_batch(cfg, args.batch_size)
    model = jax_pi0.Pi0(cfg, nnx.Rngs(0))
    runs = {"jax": jax_step_fn(model, batch)}
    try:
        import torch

        torch.set_num_threads(args.threads)
        runs["torch"] = torch_step_fn(export_params(model), cfg, batch)
    except ImportError as err:
        print(f"PyTorch twin unavailable ({err}); timing JAX only")
    times, losses = timed_rounds(runs, args.steps, args.rounds)

    print(
        f"pi0 {args.size}: forward+backward, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps"
    )
    result = {"size": args.size, "batch_size": args.batch_size, "device": jax.devices()[0].platform}
    for name, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        print(
            f"  {name:6s} loss {losses[name]:.6f}   best {best * 1e3:8.1f} ms   median {median * 1e3:8.1f} ms"
        )
        result[name] = {"best_s": best, "median_s": median, "loss": losses[name]}
    if "torch" in times:
        ratio = statistics.median(times["torch"]) / statistics.median(times["jax"])
        print(f"  torch / jax (median): {ratio:.2f}x")
        result["torch_over_jax"] = ratio
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
