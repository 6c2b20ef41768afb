"""The CLI: every stage is listed, params errors exit 2 with the key path, overrides apply."""

import json

import pytest

from balanced_pi0 import cli


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage in cli.STAGES:
        assert stage.name in out


def test_layout_stage_prints_effective_weights(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  loss:\n    strategy: per_group\n    group_weights: {left_arm: 3, right_arm: 3}\n")
    assert cli.main(["layout", "--params", str(p)]) == 0
    out = json.loads(capsys.readouterr().out)
    w = out["effective_dimension_weights"]
    assert len(w) == 23
    assert sum(w) == pytest.approx(23.0, abs=1e-4)  # renormalised to mean 1 over real dims
    assert w[7] == pytest.approx(3 * w[0], rel=1e-5)


def test_bad_params_exit_2_naming_the_key(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  loss:\n    strategy: nope\n")
    assert cli.main(["layout", "--params", str(p)]) == 2
    assert "train.loss.strategy: expected one of" in capsys.readouterr().err


def test_set_overrides(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("{}\n")
    overrides = ["-S", "train.loss.strategy=per_group", "-S", "train.loss.group_weights={base: 2}"]
    assert cli.main(["layout", "--params", str(p), *overrides]) == 0
    w = json.loads(capsys.readouterr().out)["effective_dimension_weights"]
    assert w[0] == pytest.approx(2 * w[3], rel=1e-5)


def test_per_run_stages_take_variant_and_seed(tmp_path, monkeypatch):
    p = tmp_path / "params.yaml"
    p.write_text("ablation:\n  seeds: [0, 1]\n  variants: {main: {}, delta: {train.loss.strategy: delta}}\n")
    seen = _SEEN
    monkeypatch.setattr(cli, "STAGES", (cli.Stage("probe", "probe", f"{__name__}:_probe", per_run=True),))
    assert cli.main(["probe", "--params", str(p), "--variant", "delta", "--seed", "1"]) == 0
    assert seen["params"].train.loss.strategy == "delta" and seen["params"].train.seed == 1
    assert cli.main(["probe", "--params", str(p), "--seed", "3"]) == 0
    assert seen["params"].train.loss.strategy == "uniform" and seen["params"].train.seed == 3
    assert cli.main(["probe", "--params", str(p), "--variant", "nope"]) == 2


_SEEN: dict = {}


def _probe(params):
    _SEEN["params"] = params
