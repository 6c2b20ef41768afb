"""What the padding-aware, group-weighted loss costs in a training step.

One optimiser step of the tiny pi0 (or, with ``--model mlp``, a small MLP velocity
model; flow matching, pi0's convention) with the plain mean of the squared error versus ``action_loss``
(``token`` normalisation, ``delta`` weighting: the most expensive strategy), in
JAX (jitted step) and PyTorch (eager step), measured in one run. Rounds of the
two variants alternate so that drift on a shared machine hits both alike; the
fastest and the median round are reported. One thread per backend, for stable numbers.

Whole steps of a few tens of milliseconds drift by a few per cent from round to round,
more than the loss costs. So the same run also times the two losses alone (forward and
backward from a given ``sq_err``, thousands of repetitions, interleaved) and states the
added time as a share of the median plain step: the precise answer to "what does the
loss add to a step". It is an upper bound for JAX, where the loss alone pays a dispatch
that the fused step does not.

    uv run python benchmarks/loss_overhead.py [--model pi0|mlp] [--batch-size 16] [--horizon 10] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from balanced_pi0.groups import MODEL_ACTION_DIM, R1PRO
from balanced_pi0.loss import LossSpec, action_loss

SPEC = LossSpec(
    strategy="delta", mask_normalization="token", group_weights={"left_arm": 3.0, "right_arm": 3.0}
)


def make_batch(batch_size: int, horizon: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normalised actions with LeRobot-style end-of-episode padding on a third of the samples."""
    rng = np.random.default_rng(seed)
    actions = np.cumsum(rng.normal(0, 0.1, (batch_size, horizon, MODEL_ACTION_DIM)), axis=1)
    actions[:, :, R1PRO.real_action_dim :] = 0.0
    real_steps = np.where(rng.random(batch_size) < 1 / 3, rng.integers(1, horizon + 1, batch_size), horizon)
    action_is_pad = np.arange(horizon)[None, :] >= real_steps[:, None]
    state = rng.normal(size=(batch_size, R1PRO.real_action_dim))
    return {
        "state": state.astype(np.float32),
        "actions": actions.astype(np.float32),
        "action_is_pad": action_is_pad,
    }


def _timed_rounds(run_round, variants, rounds: int) -> dict[str, list[float]]:
    """Seconds of every round of each variant, the variants interleaved round by round."""
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            start = time.perf_counter()
            run_round(v)
            times[v].append(time.perf_counter() - start)
    return times


VARIANTS = ("mean", "action_loss")


#: the loss-alone timing: rounds x repetitions per round
LOSS_ROUNDS, LOSS_REPS = 5, 500


def loss_only_times(batch, reps: int = LOSS_REPS, rounds: int = LOSS_ROUNDS) -> dict[str, dict[str, float]]:
    """Median seconds of the loss alone (value and gradient w.r.t. ``sq_err``), per backend and variant."""
    rng = np.random.default_rng(1)
    sq = rng.random(batch["actions"].shape).astype(np.float32)

    j_sq, j_pad, j_act = (jnp.asarray(x) for x in (sq, batch["action_is_pad"], batch["actions"]))
    j_fns = {
        "mean": jax.jit(jax.value_and_grad(lambda e, pad, a: jnp.mean(e))),
        "action_loss": jax.jit(jax.value_and_grad(lambda e, pad, a: action_loss(e, pad, a, SPEC)[0])),
    }

    def jax_advance(variant: str, n: int) -> None:
        for _ in range(n):
            out = j_fns[variant](j_sq, j_pad, j_act)
        jax.block_until_ready(out)

    t_sq = torch.from_numpy(sq).requires_grad_(True)
    t_pad, t_act = torch.from_numpy(batch["action_is_pad"]), torch.from_numpy(batch["actions"])

    def torch_advance(variant: str, n: int) -> None:
        for _ in range(n):
            loss = action_loss(t_sq, t_pad, t_act, SPEC)[0] if variant == "action_loss" else t_sq.mean()
            loss.backward()

    out = {}
    for name, advance in (("jax (jit)", jax_advance), ("torch", torch_advance)):
        times = _per_step_times(advance, 50, reps, rounds)
        out[name] = {v: statistics.median(t) for v, t in times.items()}
    return out


def _per_step_times(advance, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Warm every variant up, then time interleaved rounds; ``advance(variant, n)`` runs n steps, blocking."""
    for v in VARIANTS:
        advance(v, warmup)
    times = _timed_rounds(lambda v: advance(v, steps), VARIANTS, rounds)
    return {v: [x / steps for x in t] for v, t in times.items()}


def _jax_advance(state: dict, *inputs):
    """``advance`` for jitted steps ``step(*carry, *inputs) -> (*carry, loss)`` kept in ``state[variant]``.

    The batch goes in as an argument, not a closure: jit would fold a captured batch (and the
    loss weights computed from it) into constants and time less than a training step does."""

    def advance(variant: str, n: int) -> None:
        step, carry = state[variant]
        for _ in range(n):
            *carry, loss = step(*carry, *inputs)
        jax.block_until_ready(loss)
        state[variant] = (step, carry)

    return advance


def _torch_advance(models: dict, step):
    def advance(variant: str, n: int) -> None:
        model, opt = models[variant]
        for _ in range(n):
            step(model, opt, variant == "action_loss")

    return advance


# --------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------
def jax_steps(batch, hidden: int, steps: int, rounds: int) -> dict[str, list[float]]:
    b, h, d = batch["actions"].shape
    sizes = [h * d + batch["state"].shape[1] + 1, hidden, hidden, h * d]
    keys = jax.random.split(jax.random.key(0), len(sizes))
    params = [
        (jax.random.normal(k, (i, o)) / np.sqrt(i), jnp.zeros(o))
        for k, i, o in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]
    opt = optax.adam(1e-4)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def velocity(params, x_t, t, state):
        x = jnp.concatenate([x_t.reshape(b, -1), state, t[:, None]], axis=-1)
        for i, (w, bias) in enumerate(params):
            x = x @ w + bias
            x = jax.nn.gelu(x) if i < len(params) - 1 else x
        return x.reshape(b, h, d)

    def make_step(use_action_loss: bool):
        def loss_fn(params, batch, key):
            k_noise, k_time = jax.random.split(key)
            actions = batch["actions"]
            noise = jax.random.normal(k_noise, actions.shape)
            t = jax.random.beta(k_time, 1.5, 1.0, (b,)) * 0.999 + 0.001
            x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
            sq_err = jnp.square(velocity(params, x_t, t, batch["state"]) - (noise - actions))
            if use_action_loss:
                return action_loss(sq_err, batch["action_is_pad"], actions, SPEC)[0]
            return jnp.mean(sq_err)

        @jax.jit
        def step(params, opt_state, key, batch):
            key, sub = jax.random.split(key)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, sub)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, key, loss

        return step

    state = {
        v: (make_step(v == "action_loss"), (params, opt.init(params), jax.random.key(1))) for v in VARIANTS
    }
    return _per_step_times(_jax_advance(state, batch), 10, steps, rounds)


# --------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------
def torch_steps(batch, hidden: int, steps: int, rounds: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    b, h, d = batch["actions"].shape
    batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))

    def make_model():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(h * d + batch["state"].shape[1] + 1, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, h * d),
        )
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(model, opt, use_action_loss: bool):
        actions = batch["actions"]
        noise = torch.randn_like(actions)
        t = beta.sample((b,)) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        inputs = torch.cat([x_t.reshape(b, -1), batch["state"], t[:, None]], dim=-1)
        sq_err = torch.square(model(inputs).reshape(b, h, d) - (noise - actions))
        if use_action_loss:
            loss = action_loss(sq_err, batch["action_is_pad"], actions, SPEC)[0]
        else:
            loss = sq_err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    models = {v: make_model() for v in VARIANTS}
    return _per_step_times(_torch_advance(models, step), 10, steps, rounds)


# --------------------------------------------------------------------------------------
# The tiny pi0 (the embedded default's model), both backends
# --------------------------------------------------------------------------------------
def _pi0_inputs(batch, cfg, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, h, d = batch["actions"].shape
    res = cfg.image_resolution
    return {
        "images": {c: rng.uniform(-1, 1, (b, res, res, 3)).astype(np.float32) for c in cfg.cameras},
        "image_masks": {c: np.ones(b, bool) for c in cfg.cameras},
        "state": np.pad(batch["state"], ((0, 0), (0, d - batch["state"].shape[1]))),
        "tokenized_prompt": rng.integers(3, 200, (b, cfg.max_token_len)).astype(np.int32),
        "tokenized_prompt_mask": np.arange(cfg.max_token_len)[None].repeat(b, 0) < 30,
        "noise": rng.normal(size=(b, h, d)).astype(np.float32),
        "time": (rng.beta(1.5, 1.0, b) * 0.999 + 0.001).astype(np.float32),
    }


def jax_pi0_steps(batch, cfg, steps: int, rounds: int) -> dict[str, list[float]]:
    from flax import nnx

    from balanced_pi0.backends.jax.pi0 import Observation, Pi0

    x = _pi0_inputs(batch, cfg)
    obs = Observation(
        **{
            k: jax.tree.map(jnp.asarray, x[k])
            for k in ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")
        }
    )
    actions, pad = jnp.asarray(batch["actions"]), jnp.asarray(batch["action_is_pad"])
    noise, t = jnp.asarray(x["noise"]), jnp.asarray(x["time"])
    graphdef, params, rest = nnx.split(Pi0(cfg, nnx.Rngs(0)), nnx.Param, ...)
    opt = optax.adam(1e-4)

    def make_step(use_action_loss: bool):
        def loss_fn(params, obs, actions, noise, t, pad):
            sq_err = nnx.merge(graphdef, params, rest).compute_loss(obs, actions, noise, t)
            return action_loss(sq_err, pad, actions, SPEC)[0] if use_action_loss else jnp.mean(sq_err)

        @jax.jit
        def step(params, opt_state, *inputs):
            loss, grads = jax.value_and_grad(loss_fn)(params, *inputs)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    state = {v: (make_step(v == "action_loss"), (params, opt.init(params))) for v in VARIANTS}
    return _per_step_times(_jax_advance(state, obs, actions, noise, t, pad), 3, steps, rounds)


def torch_pi0_steps(batch, cfg, steps: int, rounds: int) -> dict[str, list[float]]:
    from balanced_pi0.backends.torch.pi0 import Observation, Pi0

    x = _pi0_inputs(batch, cfg)
    as_t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    obs = Observation(
        images={c: as_t(v) for c, v in x["images"].items()},
        image_masks={c: as_t(v) for c, v in x["image_masks"].items()},
        state=as_t(x["state"]),
        tokenized_prompt=as_t(x["tokenized_prompt"]).long(),
        tokenized_prompt_mask=as_t(x["tokenized_prompt_mask"]),
    )
    actions, pad = as_t(batch["actions"]), as_t(batch["action_is_pad"])
    noise, t = as_t(x["noise"]), as_t(x["time"])

    def make_model():
        torch.manual_seed(0)
        model = Pi0(cfg)
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(model, opt, use_action_loss: bool):
        sq_err = model.compute_loss(obs, actions, noise, t)
        loss = action_loss(sq_err, pad, actions, SPEC)[0] if use_action_loss else sq_err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    models = {v: make_model() for v in VARIANTS}
    return _per_step_times(_torch_advance(models, step), 3, steps, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--model",
        choices=("mlp", "pi0"),
        default="pi0",
        help="the tiny pi0 (default) or a small MLP velocity model",
    )
    parser.add_argument(
        "--resolution", type=int, default=32, help="pi0 image resolution (the default pipeline's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = make_batch(args.batch_size, args.horizon)
    if args.model == "pi0":
        from balanced_pi0.model_config import get_config

        cfg = get_config("tiny", action_horizon=args.horizon, image_resolution=args.resolution)
        runs = (
            ("jax (jit)", lambda b: jax_pi0_steps(b, cfg, args.steps, args.rounds)),
            ("torch", lambda b: torch_pi0_steps(b, cfg, args.steps, args.rounds)),
        )
        model = f"tiny pi0 at {args.resolution} px"
    else:
        runs = (
            ("jax (jit)", lambda b: jax_steps(b, args.hidden, args.steps, args.rounds)),
            ("torch", lambda b: torch_steps(b, args.hidden, args.steps, args.rounds)),
        )
        model = f"MLP hidden {args.hidden}"
    print(
        f"batch {args.batch_size} x horizon {args.horizon} x {MODEL_ACTION_DIM} dims, {model}; "
        f"action_loss = {SPEC.strategy}/{SPEC.mask_normalization}; {args.rounds} rounds x {args.steps} steps"
    )
    print(
        "ms per step; 'best' is the fastest round (least disturbed on a shared machine), 'median' the typical one"
    )
    print(
        f"{'backend':10s} {'':7s} {'mean':>8s} {'action_loss':>12s} {'added':>7s} {'ratio':>7s} {'overhead':>9s}"
    )
    step_ms = {}
    for name, run in runs:
        times = run(batch)
        step_ms[name] = statistics.median(times["mean"]) * 1e3
        for stat in (min, statistics.median):
            plain, ours = stat(times["mean"]), stat(times["action_loss"])
            print(
                f"{name:10s} {'best' if stat is min else 'median':7s} {plain * 1e3:8.3f} {ours * 1e3:12.3f} "
                f"{(ours - plain) * 1e3:7.3f} {ours / plain:7.3f} {(ours / plain - 1) * 100:8.1f}%"
            )
    print()
    print(
        f"the loss alone (value and gradient w.r.t. sq_err), ms, median of {LOSS_ROUNDS} rounds x {LOSS_REPS};"
    )
    print("'of step' = added time / median plain step above (target: <= 2 %)")
    print(f"{'backend':10s} {'mean':>8s} {'action_loss':>12s} {'added':>7s} {'of step':>8s}")
    for name, t in loss_only_times(batch).items():
        added = (t["action_loss"] - t["mean"]) * 1e3
        print(
            f"{name:10s} {t['mean'] * 1e3:8.3f} {t['action_loss'] * 1e3:12.3f} {added:7.3f} "
            f"{added / step_ms[name] * 100:7.2f}%"
        )


if __name__ == "__main__":
    main()
