"""``bpi0 eval``: offline metrics on the validation episodes and closed-loop rollouts.

Reads a trained run's final params (``<run>/final/params.npz``), samples action chunks
with fixed noise seeds, and writes ``<out>/metrics.json`` (DVC metrics), per-group plots
and a few rollout GIFs. Same checkpoint and seeds → identical bytes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from balanced_pi0 import config as _config
from balanced_pi0 import io
from balanced_pi0.errors import InputError
from balanced_pi0.evaluate import closed_loop, offline
from balanced_pi0.groups import GroupLayout

#: the noise of flow sample s of chunk batch b is drawn from SeedSequence((EVAL_NOISE_KEY, seed, b, s))
EVAL_NOISE_KEY = 0xE7A1


def hold_actions(state: np.ndarray, layout: GroupLayout, action_width: int) -> np.ndarray:
    """The "hold the current pose" action: current positions, a zero command for the base (velocity)
    and for Meta-World's groups (an end-effector delta and a grip effort).

    Needs state in the action layout (true for the embedded task and Meta-World); a dataset whose
    state is ordered differently (BEHAVIOR-1K's proprio) needs a state→action index map first.
    """
    if state.shape[-1] < action_width:
        raise InputError(
            f"eval: state has {state.shape[-1]} dims but actions {action_width}: hold-the-pose needs the "
            "state in the action layout"
        )
    hold = np.array(state[..., :action_width], dtype=np.float64)
    for g in layout.groups:
        if g.holds_at_zero:
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
            samples.append(policy_io.robot_actions(sampler(obs, noise), batch["state"]))
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
    expert: str = "results/expert/metrics.json",
    out: str = "runs/train/eval",
) -> None:
    from balanced_pi0.backends import init_backend, make_backend
    from balanced_pi0.data.loader import ChunkLoader
    from balanced_pi0.data.lowdim import load_lowdim
    from balanced_pi0.policy_io import PolicyIO
    from balanced_pi0.run_meta import check_norm_stats

    ec = params.eval
    layout = params.layout.build()
    final = Path(run_dir) / "final" / "params.npz"
    if not final.exists():
        raise InputError(f"{final}: no final params (has `bpi0 train` finished for this run?)")
    # Inputs are checked before the model is built or anything is written.
    low = load_lowdim(Path(dataset), action_dim=layout.real_action_dim)
    val = io.read_split(split, need_val=True, dataset_episodes=low.episodes)["val"]
    policy_io = PolicyIO.from_params(params, norm_stats)
    check_norm_stats(policy_io, params, norm_stats, state_dim=low.state.shape[1])
    expert_summary = read_expert(Path(expert), rollout_seeds(params)) if ec.rollouts > 0 else None
    flat = io.load_params_npz(final, what="the run's final params")
    backend = make_backend(params)
    init_backend(backend, flat, str(final))
    sampler = make_sampler(backend, ec.num_steps, source=final)

    loader = ChunkLoader(
        dataset,
        action_horizon=params.model.action_horizon,
        batch_size=ec.batch_size,
        episodes=val,
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
    out_dir = Path(out)
    staging = out_dir.parent / f".{out_dir.name}.eval"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if expert_summary is not None:
            metrics["closed_loop"] = closed_loop_eval(params, sampler, policy_io, staging, expert_summary)
        io.write_json(staging / "metrics.json", json_safe(metrics))
        plot_offline(metrics["offline"], staging / "offline.png")
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_expert(path: Path, seeds: Sequence[int]) -> dict:
    """The expert's summary, checked to be of the scenes ``seeds`` (``rollout_seeds(params)``): every
    ratio against the expert compares rollouts of the same scenes, or the eval stops."""
    summary = io.read_json_object(
        path, "of expert rollout results", missing="expert rollouts not found (run `bpi0 expert` first)"
    )
    entries = summary.get("per_seed")
    have = [e.get("seed") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None
    if have != list(seeds):
        raise InputError(
            f"{path}: the expert's rollouts are of {_scenes(have)}, this eval's of {_scenes(list(seeds))} "
            "(eval.rollout_seed, eval.rollouts); run `bpi0 expert` with this eval's params"
        )
    return summary


def _scenes(seeds: list | None) -> str:
    if seeds is None:
        return "no per-scene list"
    return f"{len(seeds)} scenes" + (f" (seeds {seeds[0]}..{seeds[-1]})" if seeds else "")


def publish(staging: Path, out: Path) -> None:
    """Move every file written under ``staging`` onto its place under ``out`` (each an atomic rename),
    only once the whole stage has succeeded; files of ``out`` the stage does not write stay."""
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = out / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def _every_nth(loader, stride: int):
    """Deterministic subsample of the validation items: every ``stride``-th batch."""
    for i, batch in enumerate(loader):
        if i % stride == 0:
            yield batch


def make_sampler(backend, num_steps: int, source: Path | str = "the model") -> Sampler:
    """Sampled model actions; a non-finite one stops the stage (a broken model must not score as null)."""

    def sample(observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        actions = np.asarray(backend.sample(observation, noise, num_steps))
        if not np.all(np.isfinite(actions)):
            raise InputError(
                f"{source}: the model predicts non-finite actions (NaN or inf); no metrics written"
            )
        return actions

    return sample


def make_env(params: _config.Params, cameras=None):
    """The eval env of ``dataset.source``: Meta-World's for ``metaworld:<tasks>``, else the embedded
    task; ``cameras=()`` renders nothing (the scripted experts read no image)."""
    cameras = tuple(params.dataset.cameras if cameras is None else cameras)
    kind, _, arg = params.dataset.source.partition(":")
    if kind == "metaworld":
        from balanced_pi0.sim.metaworld import MetaWorldEnv, parse_tasks

        mw = params.dataset.metaworld
        return MetaWorldEnv(
            parse_tasks(arg), resolution=mw.resolution, cameras=cameras, max_steps=params.eval.max_steps
        )
    from balanced_pi0.sim.env import MobileReachEnv

    sim = params.dataset.sim
    return MobileReachEnv(
        resolution=sim.resolution,
        cameras=cameras,
        max_steps=params.eval.max_steps,
        fps=sim.fps,
        arm_heavy_fraction=sim.arm_heavy_fraction,
    )


def rollout_seeds(params: _config.Params) -> list[int]:
    """Held-out scenes: the dataset's episodes use seeds derived from dataset.sim.seed, these do not."""
    return [params.eval.rollout_seed + i for i in range(params.eval.rollouts)]


def run_rollouts(
    params, make_env_, policy, *, chunk: int, name: str, reset=None, out: Path | None = None, videos=0
):
    """One rollout per held-out scene, ``eval.parallel_envs`` scenes at a time in lockstep.

    ``policy(observations, seeds) -> [B, H, D]`` (``closed_loop.BatchPolicy``); ``make_env_()``
    builds one env; ``reset(env_index, env)`` resets a stateful policy after its env's reset.
    """
    ec = params.eval
    seeds = rollout_seeds(params)
    envs = [make_env_() for _ in range(min(ec.parallel_envs, len(seeds)))]
    fps = envs[0].fps
    rollouts = []
    try:
        with tqdm(total=len(seeds), desc=f"rollouts ({name})", unit="ep", leave=False) as bar:
            for lo in range(0, len(seeds), len(envs)):
                batch = seeds[lo : lo + len(envs)]
                # the last batch reruns scenes of its own to stay full; only its own seeds are kept
                padded = batch + seeds[: len(envs) - len(batch)]
                done = closed_loop.rollout_batch(
                    envs,
                    policy,
                    padded,
                    n_action_steps=chunk,
                    max_steps=ec.max_steps,
                    reset_policy=None if reset is None else (lambda i: reset(i, envs[i])),
                    record_camera=params.dataset.cameras[0] if (out is not None and lo < videos) else None,
                    recorded=range(videos - lo),  # only the scenes with a video render every step
                )[: len(batch)]
                for i, r in enumerate(done):
                    if r.frames is not None and lo + i < videos:
                        write_gif(out / "rollouts" / f"seed{r.seed}.gif", r.frames, fps=fps)
                rollouts.extend(done)
                bar.update(len(batch))
    finally:
        for env in envs:
            env.close()
    return closed_loop.summarize(rollouts, params.layout.build(), fps)


def expert(params: _config.Params, out: str = "results/expert/metrics.json") -> None:
    """``bpi0 expert``: the scripted expert through the closed-loop harness, on the eval scenes.

    Checks the harness before any model is judged by it, and is the motion reference
    that every run's rollouts are compared with.
    """
    if params.dataset.source.startswith("metaworld:"):
        from balanced_pi0.sim.metaworld import MetaWorldExpert as ScriptedExpert
    else:
        from balanced_pi0.sim.expert import ScriptedExpert

    agents = [ScriptedExpert() for _ in range(params.eval.parallel_envs)]
    summary = run_rollouts(
        params,
        lambda: make_env(params, cameras=()),
        lambda obs, seeds: np.stack([a.act(o)[None] for a, o in zip(agents, obs, strict=False)]),
        chunk=1,
        name="expert",
        reset=lambda i, env: agents[i].reset(env),
    )
    io.write_json(Path(out), json_safe(summary))
    lo, hi = summary["success_ci95"]
    print(
        f"expert: {summary['successes']}/{summary['episodes']} = {summary['success_rate']:.1%} "
        f"(95% CI {lo:.1%}-{hi:.1%})"
    )


def closed_loop_eval(
    params: _config.Params, sampler: Sampler, policy_io, out: Path, expert_summary: Mapping[str, Any]
) -> dict[str, Any]:
    """The policy in closed loop with action chunking, compared with the expert on the same scenes."""
    ec = params.eval
    horizon = params.model.action_horizon

    calls: dict[int, int] = {}

    def policy(observations: list[Mapping[str, Any]], seeds: list[int]) -> np.ndarray:
        batch = {
            "state": np.stack([np.asarray(o["state"], np.float32) for o in observations]),
            "images": {
                cam: np.stack([o["images"][cam] for o in observations]) for cam in observations[0]["images"]
            },
            "prompt": [o["prompt"] for o in observations],
        }
        shape = (horizon, policy_io.action_dim)
        if ec.noise == "zero":
            noise = np.zeros((len(seeds), *shape), np.float32)
        else:  # keyed by (scene seed, call): a scene's rollout does not depend on the other scenes
            noise = []
            for s in seeds:
                calls[s] = calls.get(s, -1) + 1
                call = 0 if ec.noise == "per_scene" else calls[s]
                noise.append(flow_noise(params.train.seed, s, call, shape))
            noise = np.stack(noise)
        chunks = sampler(policy_io.observation(batch), noise)
        return policy_io.robot_actions(chunks, batch["state"])

    summary = run_rollouts(
        params,
        lambda: make_env(params),
        policy,
        chunk=ec.n_action_steps,
        name="policy",
        out=out,
        videos=ec.videos,
        reset=lambda i, env: None,
    )
    return {
        "policy": summary,
        "expert": dict(expert_summary),
        "vs_expert": closed_loop.compare_with_expert(summary, expert_summary),
    }


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
