"""The typed params loader: defaults, the repo's params.yaml, and every kind of bad input."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from balanced_pi0 import config
from balanced_pi0.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_loads_and_builds_the_r1pro_layout():
    params = config.load(REPO / "params.yaml")
    assert params.layout.build().name == "r1pro"
    assert params.train.loss.mask_normalization == "token"
    assert params.train.total_steps == sum(p.steps for p in params.train.curriculum)


def test_sections_are_frozen():
    params = config.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.loss.strategy = "delta"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"train": {"loss": {"strategy": "foo"}}},
            r"train\.loss\.strategy: expected one of 'uniform', 'per_group'",
        ),
        (
            {"train": {"loss": {"mask_normalization": "mean"}}},
            r"train\.loss\.mask_normalization: expected one of",
        ),
        ({"train": {"loss": {"strateg": "uniform"}}}, r"train\.loss\.strateg: unknown key"),
        ({"bogus": 1}, r"bogus: unknown key"),
        ({"train": {"batch_size": "many"}}, r"train\.batch_size: Input should be a valid integer"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: Input should be greater than 0"),
        (
            {"dataset": {"source": "ftp:foo"}},
            r"dataset\.source: expected 'sim', 'hub:<repo_id>', 'b1k:<path>' or 'metaworld:<task>\[,<task>\.\.\.\]'",
        ),
        ({"train": {"loss": {"group_weights": {"arm": 2}}}}, r"unknown group\(s\) \['arm'\]"),
        (
            {"train": {"loss": {"group_weights": {"base": -2}}}},
            r"train\.loss\.group_weights\.base: weights must be",
        ),
        (
            {"train": {"loss": {"strategy": "per_dimension"}}},
            r"train\.loss\.dimension_weights: required when strategy is 'per_dimension'",
        ),
        ({"train": {"loss": {"dimension_weights": [1.0, 2.0]}}}, r"dimension_weights: expected 23 weights"),
        (
            {
                "layout": {
                    "groups": {"a": [0, 2], "b": [1, 3]},
                    "roles": {"a": "arm", "b": "arm"},
                    "real_action_dim": 3,
                }
            },
            r"layout: .*overlap at dimension 1",
        ),
        (
            {"layout": {"groups": {"a": [0, 2]}, "roles": {"a": "arm"}}},
            r"layout: .*real_action_dim is required",
        ),
        ({"layout": {"groups": {"a": [0, 2]}, "real_action_dim": 2}}, r"layout: roles are required"),
        (
            {"layout": {"groups": {"a": [0, 1], "b": [1, 2]}, "roles": {"a": "arm"}, "real_action_dim": 2}},
            r"layout: layout 'custom': group 'b' has no role \(layout\.roles\.b",
        ),
        (
            {"layout": {"groups": {"a": [0, 2]}, "roles": {"a": "elbow"}, "real_action_dim": 2}},
            r"layout: layout 'custom': group 'a' has role 'elbow'; roles are \['base_velocity'",
        ),
        (
            {"layout": {"groups": {"a": [0, 2]}, "roles": {"a": "arm", "z": "arm"}, "real_action_dim": 2}},
            r"roles given for groups \['z'\]",
        ),
        (
            {"train": {"curriculum": [{"steps": 10, "episodes": "hard"}]}},
            r"train\.curriculum\.0\.episodes: expected",
        ),
    ],
)
def test_bad_params_name_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(data)


def test_custom_layout_from_params():
    params = config.from_dict(
        {
            "layout": {
                "groups": {"arm": [0, 7], "drive": [7, 10]},
                "roles": {"arm": "arm", "drive": "base_velocity"},
                "real_action_dim": 10,
                "delta_mask": [7, -3],  # the default norm stats include delta_per_timestep
            }
        }
    )
    layout = params.layout.build()
    assert layout.group_names == ("arm", "drive") and layout.real_action_dim == 10
    assert layout.names_with_role("base_velocity") == ("drive",)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        config.load(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        config.load(bad)


def test_overrides_use_dotted_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  batch_size: 4\n")
    params = config.load(p, {"train.loss.strategy": "delta", "train.batch_size": 8})
    assert params.train.loss.strategy == "delta" and params.train.batch_size == 8
    with pytest.raises(ConfigError, match=r"train\.loss\.strategy: expected one of"):
        config.load(p, {"train.loss.strategy": "nope"})


def test_to_dict_round_trips():
    params = config.load(REPO / "params.yaml")
    assert config.from_dict(config.to_dict(params)) == params


def test_ablation_variants_apply_overrides_per_run():
    params = config.from_dict(
        {"ablation": {"seeds": [0, 1], "variants": {"main": {}, "delta": {"train.loss.strategy": "delta"}}}}
    )
    run = config.for_run(params, "delta", 1)
    assert run.train.loss.strategy == "delta" and run.train.seed == 1
    assert config.for_run(params, "main", 0).train.loss.strategy == "uniform"
    with pytest.raises(ConfigError, match=r"unknown variant 'nope'; variants are \['delta', 'main'\]"):
        config.for_run(params, "nope", 0)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        (
            {"bad": {"train.loss.strategy": "x"}},
            r"ablation\.variants\.bad: train\.loss\.strategy: expected one of",
        ),
        ({"bad": {"train.loss.strateg": "x"}}, r"ablation\.variants\.bad: train\.loss\.strateg: unknown key"),
        (
            {"bad": {"dataset.sim.episodes": 3}},
            r"bad: a variant may not override \['dataset\.sim\.episodes'\]",
        ),
        ({"bad name": {}}, r"variant name 'bad name'"),
    ],
)
def test_bad_ablation_variants_fail_at_load(variants, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"ablation": {"variants": {"main": {}, **variants}}})


def test_report_questions_must_name_variants():
    ablation = {"variants": {"main": {}, "delta": {"train.loss.strategy": "delta"}}}
    params = config.from_dict(
        {"ablation": ablation, "report": {"questions": {"weighting": ["main", "delta"]}}}
    )
    assert params.report.questions == {"weighting": ["main", "delta"]}
    with pytest.raises(ConfigError, match=r"report: variants \['sample'\] are not in ablation.variants"):
        config.from_dict({"ablation": ablation, "report": {"questions": {"mask": ["main", "sample"]}}})
    with pytest.raises(
        ConfigError, match=r"report.questions: mask: a question compares at least two variants"
    ):
        config.from_dict({"ablation": ablation, "report": {"questions": {"mask": ["main"]}}})


def test_every_variant_of_the_shipped_params_gives_valid_run_params():
    """A run's params hold one variant's overrides; the other variants are not applied on top of them
    (delta_actions with stats_balanced's norm stats would be invalid)."""
    params = config.load(Path(__file__).resolve().parents[1] / "params.yaml")
    for variant in params.ablation.variants:
        run = config.for_run(params, variant, 1)
        assert run.train.seed == 1
    run = config.for_run(params, "delta_actions", 0)
    assert run.train.delta_actions and run.train.norm_stats == "delta_per_timestep"


def test_defaults_are_the_params_yaml_values():
    """One source per fact: a key left out of a params file means what params.yaml says.

    The run matrix (``ablation``, ``report``) is the exception: it defaults to a single run.
    """
    repo = Path(__file__).resolve().parents[1]
    written = yaml.safe_load((repo / "params.yaml").read_text())
    defaults = config.to_dict(config.from_dict({}))
    for section in set(defaults) - {"ablation", "report"}:
        loaded = config.to_dict(config.from_dict({section: written.get(section, {})}))[section]
        assert defaults[section] == loaded, section


def test_the_loss_spec_is_the_typed_loss_config_plus_a_layout():
    """One copy of the loss's fields and defaults: LossSpec holds LossConfig's, and the layout."""
    from balanced_pi0.loss import LossSpec

    cfg_fields = {f.name: f.default for f in dataclasses.fields(config.LossConfig)}
    spec_fields = {f.name: f.default for f in dataclasses.fields(LossSpec)}
    assert set(spec_fields) == set(cfg_fields) | {"layout"}
    spec, cfg = LossSpec(), config.LossConfig()
    for name in cfg_fields:
        got = getattr(spec, name)
        assert (dict(got) if name == "group_weights" else got) == getattr(cfg, name), name
