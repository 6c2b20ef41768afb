"""Meta-World's v3 tasks behind the embedded env's interface, their scripted experts, and episodes.

``MetaWorldEnv`` gives the closed-loop harness what ``MobileReachEnv`` gives it:
``reset(seed) -> obs`` and ``step(action) -> (obs, success, done)`` with
``obs = {"state": float32[21], "images": {camera: uint8[H, W, 3]}, "prompt": str}``.

- **Action** (layout ``metaworld``): the end effector's xyz delta (1 = 1 cm per step) and a grip
  effort in [-1, 1], Meta-World's own 4-D action, clipped to its bounds.
- **State**: Meta-World's goal-observable observation without its frame stack: hand xyz, gripper
  opening (0 closed, 1 open), the objects' positions and quaternions (14 dims, zero-padded), and the
  goal xyz. The previous frame's 18 dims that Meta-World appends are dropped (they would push the
  state past the model's 32 dims and a chunked policy does not need them).
- **Images**: a fixed camera rendered at ``resolution`` (``corner4``: LeRobot's Meta-World view, the
  image turned 180° as LeRobot does), shadows, reflections and multisampling off (~15 ms a frame
  on the CPU; Meta-World's meshes make it slower than the embedded task's).
- **Prompt**: LeRobot's task description for the task (``lerobot/envs/metaworld_config.json``).
- **Success**: Meta-World's own ``info["success"]``; an episode ends at its first success (there is
  nothing left to demonstrate) or at ``max_steps``.
- **Seeds**: a scene is Meta-World's seeded random vector (object and goal placement) drawn from the
  env's own generator after ``env.seed(seed)`` (LeRobot's ``seeded_rand_vec``), so the same seed gives
  the same scene and, the physics being deterministic, the same bytes.

The scripted experts are Meta-World's ``metaworld.policies``; they read the full 39-D observation,
which the env keeps as privileged information (as the embedded expert reads ``env.target``).

MuJoCo 4 note: metaworld 3.1.1 pins mujoco 3.3.0, whose weld constraints have 11 numbers
(``mjNEQDATA``); MuJoCo 4 has 12 (the last one flags a relative pose computed by the compiler, 0 when
given explicitly, as Meta-World gives it). ``_patch_mocap_welds`` writes Meta-World's 11 numbers and a
0, the only change this project needs to run Meta-World on mujoco 4 (the experts' success rates match
those on 3.3.0: README, "Meta-World").
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from balanced_pi0.errors import InputError
from balanced_pi0.sim.common import check_action, make_renderer, render_cameras
from balanced_pi0.sim.recorder import Episode, episode_seed, rollout

ACTION_DIM = 4
#: Meta-World's control rate: 5 physics steps of 2.5 ms per action
FPS = 80
STATE_DIM = 21
#: indices of the 39-D observation kept as state: current frame (18) and goal (3)
_STATE_INDEX = np.r_[0:18, 36:39]
CAMERAS = ("corner4", "corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")
#: cameras LeRobot turns by 180° (its view of the scene is upside down otherwise)
_FLIPPED = ("corner2", "corner4")
#: an end effector that never left a ball of this radius (m) around its start did not try
HAND_MOVED = 0.02


@cache
def task_config() -> dict:
    """LeRobot's Meta-World table: task descriptions and each task's scripted policy class."""
    spec = find_spec("lerobot")
    path = Path(next(iter(spec.submodule_search_locations))) / "envs" / "metaworld_config.json"
    return json.loads(path.read_text())


def parse_tasks(arg: str) -> tuple[str, ...]:
    """``reach-v3,push-v3`` → the task names, each checked against Meta-World's v3 tasks."""
    tasks = tuple(t.strip() for t in arg.split(",") if t.strip())
    known = task_config()["TASK_POLICY_MAPPING"]
    unknown = [t for t in tasks if t not in known]
    if not tasks or unknown:
        raise InputError(
            f"dataset.source metaworld:{arg}: unknown task(s) {unknown or [arg]}; tasks are {sorted(known)}"
        )
    return tasks


def prompt(task: str) -> str:
    return task_config()["TASK_DESCRIPTIONS"][task]


def _patch_mocap_welds() -> None:
    import mujoco
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    if mujoco.mjNEQDATA == 11 or getattr(SawyerMocapBase, "_bpi0_patched", False):
        return

    def reset_mocap_welds(self) -> None:
        m = self.model
        for i in range(m.neq):
            if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                # Meta-World's numbers: anchor 0, relative pose identity, torque scale 5
                m.eq_data[i, :11] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0]
                m.eq_data[i, 11:] = 0.0

    SawyerMocapBase.reset_mocap_welds = reset_mocap_welds
    SawyerMocapBase._bpi0_patched = True


def _make_task_env(task: str):
    _patch_mocap_welds()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=0)
    env._freeze_rand_vec = False  # a new scene at every reset ...
    env.seeded_rand_vec = True  # ... drawn from env.seed(seed), not numpy's global generator
    return env


class MetaWorldEnv:
    """``reset(seed) -> obs``; ``step(action[4]) -> (obs, success, done)`` on one of ``tasks``.

    The scene of ``seed`` is task ``tasks[seed % len(tasks)]`` unless ``reset`` names one.
    """

    #: the embedded task's placement flag; Meta-World's scenes have no such split
    arm_heavy = None

    def __init__(
        self,
        tasks: Sequence[str],
        resolution: int = 32,
        cameras: Sequence[str] = ("corner4",),
        max_steps: int = 200,
    ) -> None:
        unknown = sorted(set(cameras) - set(CAMERAS))
        if unknown:
            raise InputError(f"cameras: unknown {unknown}; Meta-World has {list(CAMERAS)}")
        if resolution < 1 or max_steps < 1:
            raise InputError(f"resolution and max_steps must be positive; got {resolution}, {max_steps}")
        self.tasks, self.cameras = tuple(tasks), tuple(cameras)
        self.resolution, self.max_steps = resolution, max_steps
        self._envs: dict = {}
        self._renderers: dict = {}
        self.task: str | None = None
        self.fps = FPS
        if round(1.0 / self._env(self.tasks[0]).dt) != FPS:
            raise InputError(f"{self.tasks[0]}: control period {self._env(self.tasks[0]).dt} s, not 1/{FPS}")

    def _env(self, task: str):
        if task not in self._envs:
            self._envs[task] = _make_task_env(task)
        return self._envs[task]

    # --- the harness's interface ------------------------------------------------------
    def reset(self, seed: int, task: str | None = None) -> dict:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise InputError(f"reset: seed must be a non-negative int, got {seed!r}")
        self.task = self.tasks[seed % len(self.tasks)] if task is None else task
        env = self._env(self.task)
        env.seed(int(seed))
        self.raw_obs, _ = env.reset()
        self._start = self.raw_obs[:3].copy()
        self.steps, self.success, self.hand_moved = 0, False, False
        return self._observe()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, bool, bool]:
        """``render=False``: ``obs["images"]`` is None, and ``render()`` gives them for this state."""
        if self.task is None:
            raise InputError("step() before reset()")
        a = check_action(action, ACTION_DIM, "Meta-World")
        self.raw_obs, _, _, truncated, info = self._env(self.task).step(np.clip(a, -1.0, 1.0))
        self.steps += 1
        self.success = self.success or bool(info["success"])
        self.hand_moved = self.hand_moved or np.linalg.norm(self.raw_obs[:3] - self._start) > HAND_MOVED
        done = self.success or truncated or self.steps >= self.max_steps
        return self._observe(render), self.success, done

    @property
    def prompt(self) -> str:
        return prompt(self.task)

    def render(self) -> dict[str, np.ndarray]:
        """One uint8 ``[H, W, 3]`` image per camera, of the current state."""
        if not self.cameras:
            return {}
        env = self._env(self.task)
        renderer = self._renderers.get(self.task)
        if renderer is None:
            env.model.vis.quality.offsamples = 0  # no multisampling: 3x faster, and it is visual only
            renderer = self._renderers[self.task] = make_renderer(env.model, self.resolution)
        return render_cameras(renderer, env.data, self.cameras, flipped=_FLIPPED)

    def progress(self) -> dict[str, float]:
        """For the failure breakdown: whether the hand has left its start (else the arm stayed idle)."""
        return {"hand_moved": float(self.hand_moved)}

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    # --- internals -----------------------------------------------------------------------
    def _observe(self, images: bool = True) -> dict:
        state = np.asarray(self.raw_obs, np.float64)[_STATE_INDEX].astype(np.float32)
        return {"state": state, "images": self.render() if images else None, "prompt": self.prompt}


class MetaWorldExpert:
    """Meta-World's scripted policy of the env's current task, on the full observation."""

    def reset(self, env: MetaWorldEnv) -> None:
        import metaworld.policies

        self.env = env
        self.policy = getattr(metaworld.policies, task_config()["TASK_POLICY_MAPPING"][env.task])()

    def act(self, obs: dict) -> np.ndarray:
        action = self.policy.get_action(self.env.raw_obs)
        return np.clip(np.asarray(action, np.float64), -1.0, 1.0).astype(np.float32)


def generate_episodes(
    tasks: Sequence[str], episodes: int, seed: int, cameras: Sequence[str], resolution: int, max_steps: int
) -> Iterator[Episode]:
    """``episodes`` expert episodes, task ``i % len(tasks)`` for episode i, seeded from (seed, i)."""
    from tqdm import tqdm

    env = MetaWorldEnv(tasks, resolution=resolution, cameras=cameras, max_steps=max_steps)
    expert = MetaWorldExpert()
    successes = 0
    try:
        for i in tqdm(range(episodes), desc="metaworld episodes", unit="ep"):
            ep = rollout(env, expert, episode_seed(seed, i), task=tasks[i % len(tasks)])
            successes += ep.success
            yield ep
    finally:
        env.close()
    print(f"metaworld: expert success {successes}/{episodes} = {successes / max(episodes, 1):.1%}")
