"""``bpi0 eval``: offline metrics on the validation episodes and closed-loop rollouts.

Reads a trained run's final params (``<run>/final/params.npz``), samples action chunks
with fixed noise seeds, and writes ``<out>/metrics.json`` (DVC metrics), per-group plots
and a few rollout GIFs. Same checkpoint and seeds → identical bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from balanced_pi0 import config as _config
from balanced_pi0.errors import InputError
from balanced_pi0.evaluate import closed_loop, offline
from balanced_pi0.groups import BASE_GROUPS, GroupLayout
from balanced_pi0.prep import io

#: the noise of flow sample s of chunk batch b is drawn from SeedSequence((EVAL_NOISE_KEY, seed, b, s))
EVAL_NOISE_KEY = 0xE7A1


def hold_actions(state: np.ndarray, layout: GroupLayout, action_width: int) -> np.ndarray:
    """The "hold the current pose" action: current positions, zero velocity for the base.

    Needs state in the action layout (true for the embedded task); a dataset whose state
    is ordered differently (BEHAVIOR-1K's proprio) needs a state→action index map first.
    """
    if state.shape[-1] < action_width:
        raise InputError(
            f"eval: state has {state.shape[-1]} dims but actions {action_width}: hold-the-pose needs the "
            "state in the action layout"
        )
    hold = np.array(state[..., :action_width], dtype=np.float64)
    for name in BASE_GROUPS:
        g = layout.group(name)
        hold[..., g.start : g.stop] = 0.0
    return hold


def flow_noise(seed: int, batch_index: int, sample: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence((EVAL_NOISE_KEY, seed, batch_index, sample)))
    return rng.standard_normal(shape, dtype=np.float32)


Sampler = Callable[[Mapping[str, Any], np.ndarray], np.ndarray]


def offline_eval(
    batches, sampler: Sampler, policy_io, layout: GroupLayout, *, num_samples: int, seed: int, horizon: int
) -> dict[str, Any]:
    """Sample ``num_samples`` chunks per validation item and score them against the truth."""
    preds, trues, holds, pads = [], [], [], []
    for b, batch in enumerate(tqdm(batches, desc="eval offline", unit="batch", leave=False)):
        obs = policy_io.observation(batch)
        n = len(batch["prompt"])
        samples = []
        for s in range(num_samples):
            noise = flow_noise(seed, b, s, (n, horizon, policy_io.action_dim))
            samples.append(policy_io.robot_actions(sampler(obs, noise)))
        width = trues[0].shape[-1] if trues else np.asarray(batch["actions"]).shape[-1]
        preds.append(np.stack(samples))
        trues.append(np.asarray(batch["actions"], np.float64))
        holds.append(hold_actions(np.asarray(batch["state"]), layout, width))
        pads.append(np.asarray(batch["action_is_pad"], bool))
    if not trues:
        raise InputError("eval: no validation chunk to score (empty validation split?)")
    return offline.offline_metrics(
        np.concatenate(preds, axis=1),
        np.concatenate(trues),
        np.concatenate(holds),
        np.concatenate(pads),
        layout,
    )


def json_safe(x: Any) -> Any:
    """NaN/inf (an undefined ratio, e.g. no chunk moved) become null: JSON has no NaN."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def run(
    params: _config.Params,
    dataset: str = "data/dataset",
    split: str = "data/split.json",
    norm_stats: str = "data/norm_stats",
    run_dir: str = "runs/train",
    out: str = "runs/train/eval",
) -> None:
    from balanced_pi0.data.loader import ChunkLoader
    from balanced_pi0.policy_io import PolicyIO
    from balanced_pi0.train import load_params_npz, make_backend

    ec = params.eval
    layout = params.layout.build()
    final = Path(run_dir) / "final" / "params.npz"
    if not final.exists():
        raise InputError(f"{final}: no final params (has `bpi0 train` finished for this run?)")
    backend = make_backend(params)
    backend.init(load_params_npz(final))
    policy_io = PolicyIO.from_params(params, norm_stats)
    sampler = make_sampler(backend, ec.num_steps)

    loader = ChunkLoader(
        dataset,
        action_horizon=params.model.action_horizon,
        batch_size=ec.batch_size,
        episodes=io.read_split(split)["val"],
        cameras=params.dataset.cameras,
        seed=0,
        shuffle=False,
        drop_last=False,
        action_dim=layout.real_action_dim,
    )
    batches = _every_nth(loader, ec.offline_stride)
    metrics: dict[str, Any] = {
        "offline": offline_eval(
            batches,
            sampler,
            policy_io,
            layout,
            num_samples=ec.num_flow_samples,
            seed=params.train.seed,
            horizon=params.model.action_horizon,
        )
    }
    if ec.rollouts > 0:
        metrics["closed_loop"] = closed_loop_eval(params, sampler, policy_io, Path(out))
    out_dir = Path(out)
    io.write_json(out_dir / "metrics.json", json_safe(metrics))
    plot_offline(metrics["offline"], out_dir / "offline.png")


def _every_nth(loader, stride: int):
    """Deterministic subsample of the validation items: every ``stride``-th batch."""
    for i, batch in enumerate(loader):
        if i % stride == 0:
            yield batch


def make_sampler(backend, num_steps: int) -> Sampler:
    def sample(observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        return np.asarray(backend.sample(observation, noise, num_steps))

    return sample


def closed_loop_eval(params: _config.Params, sampler: Sampler, policy_io, out: Path) -> dict[str, Any]:
    from balanced_pi0.sim.env import MobileReachEnv
    from balanced_pi0.sim.expert import ScriptedExpert

    ec, sim = params.eval, params.dataset.sim
    layout = params.layout.build()
    env = MobileReachEnv(
        resolution=sim.resolution, cameras=tuple(params.dataset.cameras), max_steps=sim.max_steps, fps=sim.fps
    )
    seeds = [ec.rollout_seed + i for i in range(ec.rollouts)]
    horizon = params.model.action_horizon
    calls = {"n": 0}

    def policy(obs: Mapping[str, Any]) -> np.ndarray:
        batch = {
            "state": np.asarray(obs["state"], np.float32)[None],
            "images": {cam: np.asarray(img)[None] for cam, img in obs["images"].items()},
            "prompt": [obs["prompt"]],
        }
        noise = flow_noise(params.train.seed, 1_000_000 + calls["n"], 0, (1, horizon, policy_io.action_dim))
        calls["n"] += 1
        return policy_io.robot_actions(sampler(policy_io.observation(batch), noise))[0]

    expert = ScriptedExpert()

    def expert_policy(obs: Mapping[str, Any]) -> np.ndarray:
        return expert.act(obs)[None]

    record = params.dataset.cameras[0]
    results = {}
    for name, pol, reset, chunk in (
        ("policy", policy, None, ec.n_action_steps),
        ("expert", expert_policy, lambda: expert.reset(env), 1),
    ):
        rollouts = []
        for i, seed in enumerate(tqdm(seeds, desc=f"eval rollouts ({name})", unit="ep", leave=False)):
            if name == "policy":
                calls["n"] = seed * 10_000  # each seed's noise independent of the order of seeds
            r = closed_loop.rollout(
                env,
                pol,
                seed,
                n_action_steps=chunk,
                max_steps=sim.max_steps,
                reset_policy=reset,
                record_camera=record if (name == "policy" and i < ec.videos) else None,
            )
            if r.frames is not None:
                write_gif(out / "rollouts" / f"seed{seed}.gif", r.frames, fps=sim.fps)
            rollouts.append(r)
        results[name] = closed_loop.summarize(rollouts, layout, sim.fps)
    results["vs_expert"] = closed_loop.compare_with_expert(results["policy"], results["expert"])
    return results


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """A GIF through Pillow: no timestamps, so the bytes depend only on the frames."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    with io.atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )


def plot_offline(metrics: Mapping[str, Any], path: Path) -> None:
    """Per-group error by horizon step, and the motion ratio per group."""
    groups = metrics["groups"]
    fig = io.new_figure(9, 3.2)
    ax0, ax1 = fig.subplots(1, 2)
    for name, g in groups.items():
        ax0.plot(np.arange(1, len(g["per_step"]["mse"]) + 1), g["per_step"]["mse"], label=name)
    ax0.set(xlabel="horizon step", ylabel="MSE (physical units)", yscale="log", title="error by horizon step")
    ax0.legend(fontsize=7)
    names = list(groups)
    ax1.bar(names, [groups[n]["motion_ratio"] for n in names], color="tab:blue")
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.set(ylabel="motion ratio ρ", title="predicted / true chunk motion")
    ax1.tick_params(axis="x", rotation=45, labelsize=7)
    io.save_png(fig, path)
