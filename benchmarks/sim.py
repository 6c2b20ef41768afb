"""Embedded sim throughput: where a recorded step's time goes, and what lockstep eval's shared
renderer saves.

Runs the scripted expert for the same seeds three ways in one process and prints
steps per wall-second and per CPU-second side by side: kinematics only (no
cameras), the head camera only, and the three cameras as recorded. Rendering is
Mesa on the CPU; shadows and reflections are off (the model has no shadow map
and no reflective material, which NOTES.md measured as ~50x slower).

Then renders ``--lockstep`` envs in turn, as closed-loop eval does, once with a renderer (GL
context) per env and once through ``shared_renderer``, checks that the images are the same bytes,
and prints the two wall times, context creation included, and their ratio.

    MUJOCO_GL=egl uv run python benchmarks/sim.py [--episodes 6] [--resolution 64] [--lockstep 90]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from balanced_pi0.sim.common import make_renderer, render_cameras
from balanced_pi0.sim.env import CAMERAS, MobileReachEnv
from balanced_pi0.sim.expert import ScriptedExpert
from balanced_pi0.sim.recorder import episode_seed, rollout


def rates(env: MobileReachEnv, episodes: int) -> tuple[float, float]:
    """(steps per wall-second, steps per CPU-second) of expert rollouts."""
    expert, steps = ScriptedExpert(), 0
    env.reset(0)  # the renderer's GL context is created once, outside the timing
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(episodes):
        steps += len(rollout(env, expert, episode_seed(0, i)).action)
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def lockstep(n_envs: int, rounds: int, resolution: int) -> tuple[float, float]:
    """Wall seconds to render ``n_envs`` envs ``rounds`` times in turn (the head camera, as eval's
    policy reads): a renderer each, then the shared one. Raises if any image differs."""
    envs = [MobileReachEnv(resolution=resolution, cameras=("head",)) for _ in range(n_envs)]
    for seed, env in enumerate(envs):
        env.reset(seed)  # renders once: the shared context (one, against n_envs) is made here
    own_images, shared_images = [], []
    tic = time.perf_counter()
    own = [make_renderer(env.model, resolution) for env in envs]
    for _ in range(rounds):
        own_images += [
            render_cameras(r, env.data, env.cameras)["head"] for r, env in zip(own, envs, strict=True)
        ]
    own_s = time.perf_counter() - tic
    for r in own:
        r.close()
    tic = time.perf_counter()
    for _ in range(rounds):
        shared_images += [env.render()["head"] for env in envs]
    shared_s = time.perf_counter() - tic
    if not all(np.array_equal(a, b) for a, b in zip(own_images, shared_images, strict=True)):
        raise SystemExit("shared renderer: images differ from a renderer per env")
    return own_s, shared_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument(
        "--lockstep", type=int, default=90, help="envs rendered in turn, as eval.parallel_envs"
    )
    args = parser.parse_args()
    runs = {
        "kinematics only": (),
        "head camera": ("head",),
        "3 cameras (as recorded)": CAMERAS,
    }
    results = {
        name: rates(MobileReachEnv(resolution=args.resolution, cameras=cams), args.episodes)
        for name, cams in runs.items()
    }
    ref = results["3 cameras (as recorded)"][1]
    print(f"{'':26s} {'steps/wall-s':>13s} {'steps/cpu-s':>12s} {'x recorded (cpu)':>17s}")
    for name, (wall, cpu) in results.items():
        print(f"{name:26s} {wall:13.1f} {cpu:12.1f} {cpu / ref:17.2f}")
    own_s, shared_s = lockstep(args.lockstep, rounds=10, resolution=32)
    print(
        f"\n{args.lockstep} envs x 10 renders at 32 px (eval's lockstep): a renderer each {own_s:.1f} s, "
        f"shared {shared_s:.1f} s, same images; shared is {own_s / shared_s:.1f}x faster"
    )


if __name__ == "__main__":
    main()
