"""Meta-World behind the embedded env's interface: its scripted experts, seeded scenes, episodes that
end at success, and the whole pipeline (fetch -> normstats -> expert -> train -> eval) at toy scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balanced_pi0 import cli
from balanced_pi0.errors import InputError
from balanced_pi0.sim import metaworld as mw

TASKS = ("reach-v3", "button-press-topdown-v3")


@pytest.fixture(scope="module")
def env():
    env = mw.MetaWorldEnv(TASKS, resolution=16, cameras=("corner4",), max_steps=150)
    yield env
    env.close()


def test_observation_is_state_images_and_prompt(env):
    obs = env.reset(3)
    assert env.task == TASKS[3 % 2]
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (mw.STATE_DIM,)
    np.testing.assert_allclose(obs["state"][:3], env.raw_obs[:3], atol=1e-6)  # the hand leads the state
    np.testing.assert_allclose(obs["state"][-3:], env.raw_obs[-3:], atol=1e-6)  # the goal ends it
    assert obs["images"]["corner4"].dtype == np.uint8 and obs["images"]["corner4"].shape == (16, 16, 3)
    assert obs["prompt"] == "Press a button from the top"


def test_a_step_without_images_renders_them_on_request(env):
    """``step(render=False)`` skips the camera; ``render()`` then shows what ``step`` would have."""
    actions = np.random.default_rng(0).uniform(-1, 1, (3, mw.ACTION_DIM))

    def run(lazy):
        env.reset(7, task="reach-v3")
        for a in actions:
            obs, _, _ = env.step(a, render=not lazy)
        assert (obs["images"] is None) == lazy
        return env.render() if lazy else obs["images"]

    np.testing.assert_array_equal(run(lazy=True)["corner4"], run(lazy=False)["corner4"])


def test_a_scene_is_a_function_of_its_seed(env):
    goal = [env.reset(s, task="reach-v3")["state"][-3:].copy() for s in (1, 2, 1)]
    assert not np.allclose(goal[0], goal[1])
    np.testing.assert_array_equal(goal[0], goal[2])


@pytest.mark.parametrize("task", TASKS)
def test_expert_succeeds_and_the_episode_ends_at_success(env, task):
    ep = mw.rollout(env, mw.MetaWorldExpert(), seed=7, task=task)
    assert ep.success and len(ep.action) < env.max_steps
    assert ep.action.shape == (len(ep.state), mw.ACTION_DIM) and np.all(np.abs(ep.action) <= 1)
    assert ep.images["corner4"].shape == (len(ep.action), 16, 16, 3)


def test_episodes_are_deterministic():
    runs = [list(mw.generate_episodes(("reach-v3",), 1, 5, ("corner4",), 16, 100)) for _ in range(2)]
    (a,), (b,) = runs
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.images["corner4"], b.images["corner4"])


def test_bad_input_names_what_is_wrong(env):
    with pytest.raises(InputError, match="unknown task"):
        mw.parse_tasks("reach-v3,fly-v3")
    with pytest.raises(InputError, match="unknown"):
        mw.MetaWorldEnv(TASKS, cameras=("head",))
    env.reset(0)
    with pytest.raises(InputError, match="shape"):
        env.step(np.zeros(23))
    with pytest.raises(InputError, match="non-finite"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))


def test_pipeline_at_toy_scale(tmp_path):
    """Three short demonstrations of two tasks, two training steps, a closed-loop rollout of each task in
    Meta-World's env, and the per-task summary."""
    import yaml

    from balanced_pi0 import config

    params = config.to_dict(config.load(_experiment()))
    params["dataset"]["source"] = "metaworld:reach-v3,drawer-close-v3"
    params["dataset"]["metaworld"].update({"episodes": 3, "resolution": 16, "max_steps": 100})
    params["dataset"]["split"]["val_fraction"] = 0.34
    params["model"]["image_resolution"] = 16
    # the PyTorch backend: no XLA compilation, which took most of this test with JAX (~45 of ~90 s)
    params["train"].update({"backend": "torch", "batch_size": 2, "checkpoint_every": 2, "log_every": 1})
    params["train"]["curriculum"] = [{"steps": 2, "episodes": "train"}]
    params["train"]["optimizer"].update({"warmup_steps": 1, "decay_steps": 2})
    # one run: the summary reads every run of the matrix
    params["ablation"].update({"seeds": [0], "variants": {"main": {}}})
    params["report"].update({"reference": "main", "questions": {}, "loss_curves": ["main"]})
    params["eval"].update(
        {"rollouts": 2, "parallel_envs": 2, "max_steps": 10, "num_flow_samples": 1, "num_steps": 2}
    )
    params["eval"].update({"videos": 1, "batch_size": 8, "offline_stride": 4})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    p, d, run = str(path), tmp_path / "data", tmp_path / "runs" / "main-s0"
    data = ["--dataset", str(d / "dataset"), "--split", str(d / "split.json")]
    stats = ["--norm-stats", str(d / "norm_stats")]
    expert = tmp_path / "expert.json"
    assert (
        cli.main(["fetch", "--params", p, "--out", str(d / "dataset"), "--split", str(d / "split.json")]) == 0
    )
    assert cli.main(["normstats", "--params", p, *data, "--out", str(d / "norm_stats")]) == 0
    assert cli.main(["expert", "--params", p, "--out", str(expert)]) == 0
    run_args = ["--variant", "main", "--seed", "0"]
    assert cli.main(["train", "--params", p, *run_args, *data, *stats, "--out", str(run)]) == 0
    eval_args = ["--run-dir", str(run), "--expert", str(expert), "--out", str(run / "eval")]
    assert cli.main(["eval", "--params", p, *run_args, *data, *stats, *eval_args]) == 0

    info = json.loads((d / "dataset" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == mw.FPS
    assert info["features"]["action"]["shape"] == [4] and info["features"]["observation.state"]["shape"] == [
        21
    ]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["offline"]["groups"]) == {"arm", "gripper"}
    policy = metrics["closed_loop"]["policy"]
    assert policy["episodes"] == 2 and policy["base_distance"] == 0.0
    assert sum(policy["outcomes"].values()) == 2
    # rollout seeds 10000, 10001: task seed % 2, each task named per rollout and summarised
    assert [r["task"] for r in policy["per_seed"]] == ["reach-v3", "drawer-close-v3"]
    assert {t: s["episodes"] for t, s in policy["by_task"].items()} == {"reach-v3": 1, "drawer-close-v3": 1}
    assert set(json.loads(expert.read_text())["by_task"]) == {"reach-v3", "drawer-close-v3"}
    summary = tmp_path / "summary.json"
    runs = ["--runs", str(tmp_path / "runs"), "--expert", str(expert), "--out", str(summary)]
    assert cli.main(["metaworld-summary", "--params", p, *runs]) == 0
    assert json.loads(summary.read_text())["tasks"] == ["reach-v3", "drawer-close-v3"]
    assert "drawer-close-v3" in summary.with_suffix(".md").read_text()
    assert (run / "eval" / "rollouts" / "seed10000.gif").exists()


def _experiment():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "experiments" / "metaworld.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reach-v3", "button-press-topdown-v3", "drawer-close-v3", "push-v3"])
def test_scripted_experts_succeed_on_mujoco_4_as_on_3_3(task):
    """20 seeds each: all 20 succeed on these tasks under mujoco 3.3.0, which metaworld 3.1.1 pins."""
    env = mw.MetaWorldEnv((task,), cameras=(), max_steps=500)
    expert = mw.MetaWorldExpert()
    try:
        assert sum(mw.rollout(env, expert, seed, task=task).success for seed in range(20)) == 20
    finally:
        env.close()
