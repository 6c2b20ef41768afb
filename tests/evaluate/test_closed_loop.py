"""The closed-loop harness on a toy env whose outcome is known in advance."""

import numpy as np
import pytest
from scipy.stats import binomtest

from balanced_pi0.errors import InputError
from balanced_pi0.evaluate import closed_loop as cl
from balanced_pi0.groups import R1PRO


class ToyEnv:
    """State = the last action (position control); success when the left arm reaches 1.0."""

    fps = 10.0

    def __init__(self, max_steps=30):
        self.max_steps = max_steps
        self.renders = 0

    def reset(self, seed):
        self.t, self.seed = 0, seed
        self.state = np.zeros(23, np.float32)
        return {"state": self.state.copy(), "images": self.render()}

    def step(self, action, render=True):
        self.t += 1
        self.state = np.asarray(action, np.float32).copy()
        success = bool(np.all(self.state[7:14] >= 1.0))
        obs = {"state": self.state.copy(), "images": self.render() if render else None}
        return obs, success, self.t >= self.max_steps

    def render(self):
        """An image that names the scene and the step."""
        self.renders += 1
        return {"head": np.full((4, 4, 3), (self.seed * 31 + self.t) % 255, np.uint8)}


class EagerEnv(ToyEnv):
    """ToyEnv that renders every step whatever it is asked: what the harness did before lazy rendering."""

    def step(self, action, render=True):
        return super().step(action, render=True)


def reaching_policy(calls):
    def policy(obs):
        calls.append(1)
        chunk = np.repeat(obs["state"][None], 4, axis=0)
        for h in range(4):
            chunk[h, 7:14] = obs["state"][7:14] + 0.25 * (h + 1)
            chunk[h, 0] = 0.5  # base vx
        return chunk

    return policy


def idle_policy(obs):
    return np.repeat(obs["state"][None], 4, axis=0)


def test_reaching_policy_succeeds_with_chunking():
    calls = []
    r = cl.rollout(
        ToyEnv(), reaching_policy(calls), seed=3, n_action_steps=2, max_steps=50, record_camera="head"
    )
    # +0.25 per executed step from 0 -> 4 steps to reach 1.0; 2 executed per chunk -> 2 policy calls
    assert r.success and r.steps_to_success == 4 and len(calls) == 2
    assert r.states.shape == (5, 23) and r.actions.shape == (4, 23) and r.frames.shape == (5, 4, 4, 3)
    m = cl.motion(r, R1PRO, fps=10.0)
    assert m["base_distance"] == pytest.approx(4 * 0.5 / 10)
    assert m["arm_path"] == pytest.approx(4 * np.sqrt(7 * 0.25**2))
    assert cl.idle_arm_steps(r, R1PRO) == (0, 4)


def test_idle_policy_is_the_stagnation_signature():
    r = cl.rollout(ToyEnv(max_steps=12), idle_policy, seed=0, n_action_steps=4, max_steps=50)
    assert not r.success and r.steps == 12
    assert cl.idle_arm_steps(r, R1PRO) == (12, 12)
    summary = cl.summarize([r], R1PRO, fps=10.0)
    assert summary["arm_idle_fraction"] == 1.0 and summary["success_rate"] == 0.0


def test_summary_and_expert_comparison():
    good = [cl.rollout(ToyEnv(), reaching_policy([]), s, n_action_steps=4, max_steps=50) for s in range(3)]
    bad = [
        cl.rollout(ToyEnv(max_steps=8), idle_policy, s, n_action_steps=4, max_steps=50) for s in range(3, 4)
    ]
    s = cl.summarize(good + bad, R1PRO, fps=10.0)
    assert s["successes"] == 3 and s["episodes"] == 4
    assert s["time_to_success_s"] == pytest.approx(0.4)
    assert s["arm_idle_fraction"] == pytest.approx(8 / (3 * 4 + 8))
    expert = cl.summarize(good, R1PRO, fps=10.0)
    cmp = cl.compare_with_expert(s, expert)
    assert cmp["arm_path_vs_expert"] == pytest.approx(1.0)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (19, 20), (1, 3)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert cl.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_bad_policy_output_and_bad_chunking():
    with pytest.raises(InputError, match=r"action chunk of shape \(23,\)"):
        cl.rollout(ToyEnv(), lambda obs: obs["state"], 0, n_action_steps=1, max_steps=5)
    with pytest.raises(InputError, match="n_action_steps must be > 0"):
        cl.rollout(ToyEnv(), idle_policy, 0, n_action_steps=0, max_steps=5)


def test_scripted_expert_succeeds_through_the_harness(tmp_path):
    """The harness is right before any model is judged by it: the expert keeps its >= 95 %."""
    import json

    from balanced_pi0 import config
    from balanced_pi0.evaluate import stage

    params = config.from_dict(
        {"eval": {"rollouts": 20, "rollout_seed": 777}, "dataset": {"sim": {"resolution": 16}}}
    )
    stage.expert(params, out=str(tmp_path / "expert.json"))
    summary = json.loads((tmp_path / "expert.json").read_text())
    assert summary["episodes"] == 20
    assert summary["success_rate"] >= 0.95
    assert summary["arm_path"] > 0


def test_batched_rollouts_equal_one_at_a_time():
    """Lockstep batches (finished envs kept in the batch) give each scene the rollout it gets alone."""
    seeds = [0, 1, 2]
    limits = [6, 30, 12]  # scenes end at different times

    def batch_policy(obs, _seeds):
        return np.stack(
            [reaching_policy([])(o) * (0.5 if s == 1 else 1.0) for o, s in zip(obs, _seeds, strict=True)]
        )

    batched = cl.rollout_batch(
        [ToyEnv(max_steps=m) for m in limits], batch_policy, seeds, n_action_steps=3, max_steps=50
    )
    for r, s, m in zip(batched, seeds, limits, strict=True):
        alone = cl.rollout(
            ToyEnv(max_steps=m),
            lambda o, s=s: batch_policy([o], [s])[0],
            s,
            n_action_steps=3,
            max_steps=50,
        )
        assert (r.seed, r.success, r.steps) == (alone.seed, alone.success, alone.steps)
        np.testing.assert_array_equal(r.states, alone.states)
        np.testing.assert_array_equal(r.actions, alone.actions)


@pytest.mark.parametrize("n_action_steps", [1, 3])
def test_only_the_observations_a_policy_reads_are_rendered(n_action_steps):
    """Lazy rendering is invisible to the policy: at every query it sees the images an env that
    renders every step shows, finished scenes included, and nothing else is rendered."""
    limits = [5, 30, 12]  # scene 0 times out mid-chunk, scene 1 succeeds, scene 2 times out

    def run(make):
        seen = []

        def policy(obs, seeds):
            seen.append([(o["state"].copy(), o["images"]["head"].copy()) for o in obs])
            return np.stack(
                [reaching_policy([])(o) * (0.3 if s == 2 else 1.0) for o, s in zip(obs, seeds, strict=True)]
            )

        envs = [make(max_steps=m) for m in limits]
        rollouts = cl.rollout_batch(envs, policy, [0, 1, 2], n_action_steps=n_action_steps, max_steps=50)
        return seen, rollouts, envs

    lazy, lazy_rollouts, lazy_envs = run(ToyEnv)
    eager, eager_rollouts, eager_envs = run(EagerEnv)
    assert len(lazy) == len(eager)
    for calls in zip(lazy, eager, strict=True):
        for (s1, i1), (s2, i2) in zip(*calls, strict=True):
            np.testing.assert_array_equal(s1, s2)
            np.testing.assert_array_equal(i1, i2)
    for a, b in zip(lazy_rollouts, eager_rollouts, strict=True):
        assert (a.success, a.steps) == (b.success, b.steps)
        np.testing.assert_array_equal(a.states, b.states)
    # lazy: one render at reset and one per chunk the env executed; eager: one per step
    assert [e.renders for e in lazy_envs] == [1 + -(-r.steps // n_action_steps) for r in lazy_rollouts]
    assert [e.renders for e in eager_envs] == [1 + r.steps for r in eager_rollouts]
    if n_action_steps > 1:
        assert sum(e.renders for e in lazy_envs) < sum(e.renders for e in eager_envs)


def test_a_recorded_video_renders_every_step():
    env = ToyEnv()
    r = cl.rollout(env, reaching_policy([]), seed=3, n_action_steps=4, max_steps=50, record_camera="head")
    assert r.frames.shape == (r.steps + 1, 4, 4, 3)
    assert [int(f[0, 0, 0]) for f in r.frames] == [(3 * 31 + t) % 255 for t in range(r.steps + 1)]


def test_batch_policy_of_the_wrong_batch_size_is_an_error():
    with pytest.raises(InputError, match=r"expected \[2, H, D\]"):
        cl.rollout_batch(
            [ToyEnv(), ToyEnv()], lambda obs, s: np.zeros((1, 4, 23)), [0, 1], n_action_steps=1, max_steps=5
        )


def _with_progress(states, in_reach, hand=0, success=False):
    states = np.asarray(states, np.float64)
    n = len(states)
    return cl.Rollout(
        seed=0,
        success=success,
        steps=n - 1,
        steps_to_success=n - 1 if success else None,
        states=states,
        actions=states[1:],
        frames=None,
        progress={"in_reach": np.asarray(in_reach, float), "hand": np.full(n, float(hand))},
    )


@pytest.mark.parametrize(
    ("moves", "in_reach", "success", "expected"),
    [
        ({}, [1, 1, 1], True, "success"),
        ({"left_arm": 1.0}, [0, 0, 0], False, "base_not_arrived"),
        ({}, [0, 1, 1], False, "arm_idle"),
        ({"right_arm": 0.5, "left_arm": 0.2}, [1, 1, 1], False, "wrong_hand"),
        ({"left_arm": 0.5}, [1, 1, 1], False, "wrong_place"),
        # motion before the base arrived does not count as reaching
        ({"left_arm_before": 1.0}, [0, 0, 1], False, "arm_idle"),
        # an arm jittering in place travels a long path but never leaves its pose: idle
        ({"left_arm_jitter": 0.08}, [1, 1, 1, 1, 1, 1, 1], False, "arm_idle"),
    ],
)
def test_failure_breakdown(moves, in_reach, success, expected):
    states = np.zeros((len(in_reach), 23))
    for name, amount in moves.items():
        if name == "left_arm_before":
            states[1, 7] = amount  # moves out and back before arrival at step 2
            continue
        if name == "left_arm_jitter":
            states[1::2, 7] = amount  # 0.08 rad out and back, three times: a 0.48 rad path
            continue
        g = R1PRO.group(name)
        states[2, g.start] = amount
    r = _with_progress(states, in_reach, hand=0, success=success)
    assert cl.outcome(r, R1PRO) == expected


def test_summary_counts_outcomes_and_is_none_without_progress():
    r = _with_progress(np.zeros((3, 23)), [0, 0, 0])
    s = cl.summarize([r, r], R1PRO, fps=10.0)
    assert s["outcomes"] == {o: (2 if o == "base_not_arrived" else 0) for o in cl.OUTCOMES}
    plain = cl.rollout(ToyEnv(max_steps=3), idle_policy, 0, n_action_steps=1, max_steps=5)
    assert cl.summarize([plain], R1PRO, fps=10.0)["outcomes"] is None


def test_closest_approach_of_wrong_place_failures():
    """Each rollout's nearest hand distance; the median over the wrong-place failures only."""
    import dataclasses

    states = np.zeros((3, 23))
    states[2, R1PRO.group("left_arm").start] = 0.5  # the named (left) arm moved: wrong place
    near = _with_progress(states, [1, 1, 1])
    far = _with_progress(states, [1, 1, 1])
    idle = _with_progress(np.zeros((3, 23)), [1, 1, 1])
    rollouts = [
        dataclasses.replace(r, progress={**r.progress, "hand_distance": np.asarray(d)})
        for r, d in ((near, [0.5, 0.07, 0.2]), (far, [0.5, 0.4, 0.3]), (idle, [0.01, 0.01, 0.01]))
    ]
    s = cl.summarize(rollouts, R1PRO, fps=10.0)
    assert [e["closest_approach_m"] for e in s["per_seed"]] == pytest.approx([0.07, 0.3, 0.01])
    assert [e["outcome"] for e in s["per_seed"]] == ["wrong_place", "wrong_place", "arm_idle"]
    assert s["wrong_place_closest_m"] == pytest.approx(np.median([0.07, 0.3]))  # the idle arm left out
    no_distance = cl.summarize([near], R1PRO, fps=10.0)
    assert (
        no_distance["wrong_place_closest_m"] is None
        and "closest_approach_m" not in no_distance["per_seed"][0]
    )


@pytest.mark.parametrize(("moved", "expected"), [([0, 0, 0], "arm_idle"), ([0, 1, 1], "wrong_place")])
def test_single_arm_failure_breakdown_and_motion(moved, expected):
    """Meta-World: no base, one arm whose hand position leads the state."""
    from balanced_pi0.groups import METAWORLD

    states = np.zeros((3, 21))
    states[:, 0] = [0.0, 0.03, 0.07]  # the hand moves 7 cm along x
    r = cl.Rollout(
        seed=0,
        success=False,
        steps=2,
        steps_to_success=None,
        states=states,
        actions=np.zeros((2, 4)),
        frames=None,
        progress={"hand_moved": np.asarray(moved, float)},
    )
    assert cl.outcome(r, METAWORLD) == expected
    assert cl.motion(r, METAWORLD, fps=80.0) == pytest.approx({"base_distance": 0.0, "arm_path": 0.07})
    assert cl.idle_arm_steps(r, METAWORLD) == (0, 2)


class TwoTaskEnv(ToyEnv):
    """ToyEnv whose scene of seed s is task ``("a", "b")[s % 2]``; task b's scenes never succeed."""

    def reset(self, seed):
        self.task = ("a", "b")[seed % 2]
        return super().reset(seed)

    def step(self, action, render=True):
        obs, success, done = super().step(action, render)
        return obs, success and self.task == "a", done


def test_summary_by_task_when_the_env_names_one():
    env = TwoTaskEnv(max_steps=8)
    rollouts = cl.rollout_batch(
        [env, TwoTaskEnv(max_steps=8), TwoTaskEnv(max_steps=8)],
        lambda obs, seeds: np.stack([reaching_policy([])(o) for o in obs]),
        [3, 4, 6],
        n_action_steps=4,
        max_steps=8,
    )
    assert [r.task for r in rollouts] == ["b", "a", "a"]
    s = cl.summarize(rollouts, R1PRO, fps=10.0)
    assert [p["task"] for p in s["per_seed"]] == ["b", "a", "a"]
    assert list(s["by_task"]) == ["b", "a"]  # order of first appearance
    assert (s["by_task"]["a"]["successes"], s["by_task"]["a"]["episodes"]) == (2, 2)
    assert (s["by_task"]["b"]["successes"], s["by_task"]["b"]["episodes"]) == (0, 1)
    assert s["by_task"]["b"]["success_ci95"] == pytest.approx(list(cl.wilson_interval(0, 1)))
    assert "per_seed" not in s["by_task"]["a"]
    # an env without tasks: no task key, no by_task (the embedded task's metrics keep their bytes)
    plain = cl.summarize([cl.rollout(ToyEnv(), idle_policy, 0, n_action_steps=4, max_steps=4)], R1PRO, 10.0)
    assert "by_task" not in plain and "task" not in plain["per_seed"][0]
