"""The eval stage's offline path on a real LeRobot dataset, with policies whose scores are known."""

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from balanced_pi0 import config
from balanced_pi0.data.loader import ChunkLoader
from balanced_pi0.data.writer import write_dataset
from balanced_pi0.evaluate import stage
from balanced_pi0.groups import R1PRO
from balanced_pi0.policy_io import PolicyIO

CAMERAS = ("head", "left_wrist", "right_wrist")


@dataclass(frozen=True)
class Ep:
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict = field(default_factory=dict)
    success: bool = True
    seed: int = 0
    arm_heavy: bool = False


def _episodes(n_eps=4, length=9):
    """Position-controlled joints (state[t] = action[t-1]) and a base that stands still."""
    rng = np.random.default_rng(0)
    eps = []
    for _e in range(n_eps):
        action = np.cumsum(rng.normal(0, 0.1, (length, 23)), axis=0).astype(np.float32)
        action[:, 0:3] = 0.0
        state = np.concatenate([action[:1], action[:-1]]).astype(np.float32)
        images = {c: rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8) for c in CAMERAS}
        eps.append(
            Ep(task="reach the red cube with the left hand", state=state, action=action, images=images)
        )
    return eps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_dataset(_episodes(), root / "ds", repo_id="test/eval", fps=10, cameras=CAMERAS)
    identity = {"mean": [0.0] * 23, "std": [1.0] * 23, "q01": [-1.0] * 23, "q99": [1.0] * 23}
    (root / "ns").mkdir()
    (root / "ns" / "standard.json").write_text(
        json.dumps({"norm_stats": {"state": identity, "actions": identity}})
    )
    params = config.from_dict({"model": {"action_horizon": 4, "image_resolution": 16}})
    policy_io = PolicyIO.from_params(params, root / "ns")
    loader = ChunkLoader(
        root / "ds", action_horizon=4, batch_size=8, seed=0, shuffle=False, drop_last=False, action_dim=23
    )
    return params, policy_io, list(loader)


def test_policy_that_holds_the_pose_has_zero_motion_and_skill(setup):
    _params, policy_io, batches = setup

    def hold(obs, noise):  # the normalised current state, repeated over the chunk
        return np.repeat(obs["state"][:, None, :], noise.shape[1], axis=1)

    m = stage.offline_eval(batches, hold, policy_io, R1PRO, num_samples=2, seed=0, horizon=4)
    for g in ("left_arm", "right_arm", "torso"):
        assert m["groups"][g]["motion_ratio"] == pytest.approx(0.0, abs=1e-5)
        assert m["groups"][g]["skill"] == pytest.approx(0.0, abs=1e-5)
    assert m["pad_fraction"] > 0  # chunks at episode ends are padded, and excluded


def test_policy_that_returns_the_truth_has_unit_motion_and_skill(setup):
    _params, policy_io, batches = setup
    truth = iter([policy_io.actions(np.asarray(b["actions"]), b["state"]) for b in batches for _ in range(2)])

    def oracle(obs, noise):
        return next(truth)

    m = stage.offline_eval(batches, oracle, policy_io, R1PRO, num_samples=2, seed=0, horizon=4)
    for g in ("left_arm", "right_arm", "torso"):
        assert m["groups"][g]["motion_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert m["groups"][g]["skill"] == pytest.approx(1.0, abs=1e-5)
    assert m["overall"]["mse"] == pytest.approx(0.0, abs=1e-9)


def test_hold_zeroes_the_velocity_controlled_base():
    state = np.arange(23, dtype=np.float32)[None]
    hold = stage.hold_actions(state, R1PRO, 23)
    assert (hold[0, :3] == 0).all() and (hold[0, 3:] == state[0, 3:]).all()
    with pytest.raises(stage.InputError, match="state has 20 dims but actions 23"):
        stage.hold_actions(state[:, :20], R1PRO, 23)


def test_hold_is_a_zero_command_in_metaworld():
    from balanced_pi0.groups import METAWORLD

    state = np.arange(1, 22, dtype=np.float32)[None]  # hand xyz, gripper opening, objects, goal
    assert (stage.hold_actions(state, METAWORLD, 4) == 0).all()


def test_eval_noise_is_fixed_by_seed_batch_and_sample():
    a = stage.flow_noise(0, 3, 1, (2, 4, 32))
    assert np.array_equal(a, stage.flow_noise(0, 3, 1, (2, 4, 32)))
    assert not np.array_equal(a, stage.flow_noise(0, 3, 2, (2, 4, 32)))
    assert not np.array_equal(a, stage.flow_noise(1, 3, 1, (2, 4, 32)))


def test_json_safe_turns_undefined_ratios_into_null():
    assert stage.json_safe({"a": [1.0, float("nan")], "b": float("inf")}) == {"a": [1.0, None], "b": None}


@pytest.mark.parametrize("mode", ["fresh", "per_scene", "zero"])
def test_closed_loop_noise_modes(mode, tmp_path):
    """``eval.noise``: a new draw per replan, one draw per scene reused at every replan, or zeros."""
    params = config.from_dict(
        {
            "dataset": {"sim": {"resolution": 16}},
            "eval": {
                "rollouts": 2,
                "parallel_envs": 2,
                "max_steps": 6,
                "n_action_steps": 2,
                "videos": 0,
                "noise": mode,
            },
            "model": {"action_horizon": 4},
        }
    )
    seen = []

    class HoldIO:  # the policy holds the pose, so every scene runs to max_steps
        action_dim = 32

        def observation(self, batch):
            return {"state": batch["state"]}

        def robot_actions(self, chunks, state):
            hold = np.repeat(state[:, None, :23], chunks.shape[1], axis=1)
            hold[..., 0:3] = 0.0
            return hold

    def sampler(observation, noise):
        seen.append(np.array(noise))
        return np.zeros_like(noise)

    expert = {"episodes": 2, "successes": 2, "success_rate": 1.0, "arm_path": 1.0, "base_distance": 1.0}
    stage.closed_loop_eval(params, sampler, HoldIO(), tmp_path, expert)
    assert len(seen) == 3 and all(n.shape == (2, 4, 32) for n in seen)  # 6 steps, replanning every 2
    if mode == "zero":
        assert all(not n.any() for n in seen)
        return
    assert not np.array_equal(seen[0][0], seen[0][1])  # scenes draw their own noise
    same_each_call = all(np.array_equal(seen[0], n) for n in seen[1:])
    assert same_each_call == (mode == "per_scene")


def test_only_the_scenes_with_a_video_render_every_step(tmp_path):
    """``eval.videos``: those scenes record every frame; the rest of their batch renders only the
    observations the policy reads (one per executed chunk)."""

    class CountingEnv:
        fps = 10.0

        def __init__(self):
            self.renders = 0

        def reset(self, seed):
            self.t = 0
            return {"state": np.zeros(23, np.float32), "images": self.render()}

        def step(self, action, render=True):
            self.t += 1
            obs = {"state": np.asarray(action, np.float32), "images": self.render() if render else None}
            return obs, False, self.t >= 6

        def render(self):
            self.renders += 1
            return {"head": np.full((4, 4, 3), self.t, np.uint8)}

        def close(self):
            pass

    params = config.from_dict({"eval": {"rollouts": 3, "parallel_envs": 3, "max_steps": 6, "videos": 1}})
    envs = []

    def make_env():
        envs.append(CountingEnv())
        return envs[-1]

    def hold(observations, seeds):
        return np.stack([np.repeat(o["state"][None], 4, axis=0) for o in observations])

    stage.run_rollouts(params, make_env, hold, chunk=2, name="test", out=tmp_path, videos=1)
    assert [e.renders for e in envs] == [1 + 6, 1 + 3, 1 + 3]
    assert [p.name for p in (tmp_path / "rollouts").iterdir()] == [f"seed{params.eval.rollout_seed}.gif"]
