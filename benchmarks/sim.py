"""Embedded sim throughput: where a recorded step's time goes.

Runs the scripted expert for the same seeds three ways in one process and prints
steps per wall-second and per CPU-second side by side: kinematics only (no
cameras), the head camera only, and the three cameras as recorded. Rendering is
Mesa on the CPU; shadows and reflections are off (the model has no shadow map
and no reflective material, which NOTES.md measured as ~50x slower).

    MUJOCO_GL=egl uv run python benchmarks/sim.py [--episodes 6] [--resolution 64]
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=64)
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


if __name__ == "__main__":
    main()
