"""Arm-heavy filtering: whole training episodes scored by arm vs base motion."""

import json
import shutil

import numpy as np
import pytest

from balanced_pi0 import cli
from balanced_pi0.data.writer import EPISODES_SIDECAR
from balanced_pi0.errors import InputError
from balanced_pi0.groups import R1PRO
from balanced_pi0.prep.filter import agreement, score_episodes, select_arm_heavy

from .conftest import columns


def _independent_scores(ep, fps=10.0, min_base=0.05):
    arm = sum(
        np.sqrt(((ep[t + 1, lo:hi].astype(np.float64) - ep[t, lo:hi]) ** 2).sum())
        for lo, hi in ((7, 14), (15, 22))
        for t in range(len(ep) - 1)
    )
    base = sum(np.hypot(float(v[0]), float(v[1])) for v in ep) / fps
    return arm, base, arm / max(base, min_base)


def test_scores_match_an_independent_computation(r1pro_episodes):
    scores = score_episodes(columns(r1pro_episodes), R1PRO, min_base_motion=0.05)
    for s, ep in zip(scores, r1pro_episodes, strict=True):
        arm, base, ratio = _independent_scores(ep)
        assert s["arm_motion"] == pytest.approx(arm, rel=1e-9)
        assert s["base_distance"] == pytest.approx(base, rel=1e-6)
        assert s["ratio"] == pytest.approx(ratio, rel=1e-6)


def test_both_criteria_must_hold():
    scores = [
        {"episode": 0, "ratio": 3.0, "arm_motion": 2.0},
        {"episode": 1, "ratio": 3.0, "arm_motion": 0.1},  # idle: large ratio of nothing
        {"episode": 2, "ratio": 0.5, "arm_motion": 9.0},  # driving while moving the arms
        {"episode": 3, "ratio": 1.0, "arm_motion": 0.5},  # both exactly at the thresholds
    ]
    assert select_arm_heavy(scores, ratio_threshold=1.0, min_arm_motion=0.5) == [0, 3]


def test_empty_selection_says_how_far_the_data_is():
    a = np.zeros((11, 23))
    a[:, 0] = 1.0  # 1 m over 10 frames at 10 fps ... (11 frames: 1.1 m)
    a[:, 7] = np.linspace(0, 0.77, 11)  # ... while the left arm travels 0.77 rad: ratio 0.7
    scores = score_episodes(columns([a]), R1PRO, min_base_motion=0.05)
    with pytest.raises(InputError, match=r"^no arm-heavy episode at threshold 1\.5: max ratio is 0\.7\b"):
        select_arm_heavy(scores, ratio_threshold=1.5, min_arm_motion=0.0)
    with pytest.raises(InputError, match=r"move their arms at most 0\.77 rad < min_arm_motion 1"):
        select_arm_heavy(scores, ratio_threshold=0.5, min_arm_motion=1.0)


def _run(tmp_path, dataset, split, name, params="filter: {ratio_threshold: 1.0, min_arm_motion: 0.5}\n"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(params)
    out, report = tmp_path / name / "arm_heavy.json", tmp_path / name / "report"
    argv = ["filter", "--params", str(p), "--dataset", str(dataset), "--split", str(split)]
    code = cli.main([*argv, "--out", str(out), "--report", str(report)])
    return code, out, report


def test_stage_selects_train_reaching_episodes_deterministically(tmp_path, r1pro_dataset):
    root, split, episodes = r1pro_dataset
    code, out, report = _run(tmp_path, root, split, "a")
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["episodes"] == [1, 3]  # the reaching episodes; 5 reaches too but is validation
    assert [s["episode"] for s in doc["scores"]] == [0, 1, 2, 3, 4]
    for s in doc["scores"]:
        assert s["ratio"] == pytest.approx(_independent_scores(episodes[s["episode"]])[2], rel=1e-6)
    assert (report / "report.md").read_text().count("2 of 5 training episodes") == 1
    assert "agreement_with_generator" not in doc  # this dataset does not say how it was generated
    _, out_b, report_b = _run(tmp_path, root, split, "b")
    assert out.read_bytes() == out_b.read_bytes()
    assert (report / "histograms.png").read_bytes() == (report_b / "histograms.png").read_bytes()


def test_stage_empty_selection_exits_2_and_writes_nothing(tmp_path, r1pro_dataset, capsys):
    root, split, _ = r1pro_dataset
    code, out, report = _run(tmp_path, root, split, "c", "filter: {ratio_threshold: 1.0e6}\n")
    assert code == 2
    assert "no arm-heavy episode at threshold 1e+06: max ratio is" in capsys.readouterr().err
    assert not out.exists() and not report.exists()


def test_agreement_with_the_generator_labels(r1pro_episodes):
    scores = score_episodes(columns(r1pro_episodes), R1PRO, min_base_motion=0.05)
    chosen = select_arm_heavy(scores, ratio_threshold=1.0, min_arm_motion=0.5)
    assert chosen == [1, 3, 5]
    labels = {0: False, 1: True, 2: True, 3: True, 4: False, 5: False}
    assert agreement(chosen, scores, labels) == {
        "both": 2,
        "filter_only": 1,
        "generator_only": 1,
        "neither": 2,
    }


def test_stage_compares_with_the_generator_when_the_dataset_records_it(tmp_path, r1pro_dataset):
    root, split, _ = r1pro_dataset
    copy = tmp_path / "labelled"
    shutil.copytree(root, copy)
    facts = [{"episode_index": e, "arm_heavy": e in (1, 3, 4, 5)} for e in range(6)]
    (copy / EPISODES_SIDECAR).write_text(json.dumps(facts))
    code, out, report = _run(tmp_path, copy, split, "labelled")
    assert code == 0
    expected = {"both": 2, "filter_only": 0, "generator_only": 1, "neither": 2}  # train episodes 0..4
    assert json.loads(out.read_text())["agreement_with_generator"] == expected
    assert "against the generator's arm-heavy placements" in (report / "report.md").read_text()
