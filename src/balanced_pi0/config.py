"""Typed configuration: ``params.yaml`` loaded into frozen dataclasses.

This module is the only way code reads params. Its defaults are the values of the
repository's ``params.yaml`` (``tests/test_config.py`` holds them equal; the run matrix,
``ablation`` and ``report``, defaults to one run), so a key left out of a params file
means what it means in the embedded default. Every section is a frozen pydantic dataclass with ``extra="forbid"``, so an unknown key, a wrong type or a
value outside its allowed set is rejected with an error that names the full key
path, e.g. ``train.loss.strategy: expected one of 'uniform', 'per_group', ...``.

Sections follow the pipeline stages (fetch, analyze, normstats, filter, train,
eval, paper) so that each DVC stage can depend on only the params it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from balanced_pi0 import groups as _groups
from balanced_pi0 import model_config as _model_config
from balanced_pi0.errors import InputError

_STRICT = ConfigDict(extra="forbid")


def section(cls):
    """Frozen, unknown-key-rejecting dataclass."""
    return dataclass(frozen=True, config=_STRICT)(cls)


class ConfigError(InputError):
    """A params file that cannot be used; the message names the key path."""


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
@section
class LayoutConfig:
    """Either ``preset: r1pro`` or explicit ``groups: {name: [start, stop]}`` with ``roles: {name: role}``."""

    preset: str | None = "r1pro"
    groups: dict[str, list[int]] | None = None
    #: with ``groups``: what each group is, one of ``groups.ROLES`` (evaluation and statistics read it)
    roles: dict[str, str] | None = None
    real_action_dim: int | None = None
    #: with ``groups``: openpi ``make_bool_mask`` run lengths of the delta-action dims (presets carry theirs)
    delta_mask: list[int] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if self.groups is not None and self.real_action_dim is None:
            raise ValueError("real_action_dim is required when groups are given")
        if self.groups is not None and self.roles is None:
            raise ValueError(
                f"roles are required when groups are given: {{group: one of {list(_groups.ROLES)}}}"
            )
        if self.groups is None and self.preset is None:
            raise ValueError("give either preset or groups")
        return self

    def build(self) -> _groups.GroupLayout:
        if self.groups is not None:
            return _groups.layout_from_mapping(
                "custom", self.groups, int(self.real_action_dim), delta_mask=self.delta_mask, roles=self.roles
            )
        return _groups.get_layout(self.preset)


# --------------------------------------------------------------------------------------
# fetch: dataset source and split
# --------------------------------------------------------------------------------------
@section
class SimConfig:
    episodes: int = Field(600, gt=0)
    seed: int = 0
    resolution: int = Field(32, ge=16)
    fps: int = Field(10, gt=0)
    #: probability that the target is placed within reach of the start pose (arm-heavy episode)
    arm_heavy_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_steps: int = Field(200, gt=0)
    #: DART-style demonstration noise (Laskey et al. 2017): the env executes the expert's action plus
    #: Gaussian noise of this fraction of each group's one-step range (base velocity limits; the
    #: joints' tracking step), and the dataset records the expert's clean action. The demonstrations
    #: then show recoveries from the small errors a policy makes, as human teleoperation does.
    action_noise: float = Field(0.0, ge=0.0, le=1.0)


@section
class SplitConfig:
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


@section
class B1KConfig:
    #: side of the square images the chosen cameras are resized to (B1K records 720/480 px)
    resolution: int = Field(64, ge=16)


@section
class MetaWorldConfig:
    """``metaworld:<task>[,<task>...]`` only: episodes of Meta-World's scripted experts."""

    episodes: int = Field(40, gt=0)
    seed: int = 0
    #: side of the square camera images (the tiny model reads 32 px)
    resolution: int = Field(32, ge=16)
    #: control steps (80 Hz) before an episode counts as failed; the easy tasks' experts need < 150
    max_steps: int = Field(300, gt=0)


@section
class DatasetConfig:
    #: ``sim`` (embedded MuJoCo task), ``hub:<repo_id>``, ``b1k:<path>`` or ``metaworld:<task>[,<task>...]``
    source: str = "sim"
    repo_id: str = "balanced_pi0/sim_reach"
    #: cameras to keep (for hub/b1k sources, the dataset's image keys; sim always has these three)
    cameras: list[str] = Field(default_factory=lambda: ["head"])
    sim: SimConfig = Field(default_factory=SimConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    b1k: B1KConfig = Field(default_factory=B1KConfig)
    metaworld: MetaWorldConfig = Field(default_factory=MetaWorldConfig)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v == "sim" or (v.startswith(("hub:", "b1k:", "metaworld:")) and len(v.split(":", 1)[1]) > 0):
            return v
        raise ValueError(
            f"expected 'sim', 'hub:<repo_id>', 'b1k:<path>' or 'metaworld:<task>[,<task>...]', got {v!r}"
        )


# --------------------------------------------------------------------------------------
# Preparation stages
# --------------------------------------------------------------------------------------
@section
class AnalyzeConfig:
    #: histogram bins of the plots and of the histograms in metrics.json
    bins: int = Field(50, gt=1)
    #: suggested group weights are clipped to [1/max_weight, max_weight] before renormalising
    max_weight: float = Field(5.0, ge=1.0)


NormVariant = Literal["standard", "balanced", "per_timestep", "delta_per_timestep"]


@section
class NormStatsConfig:
    variants: list[NormVariant] = Field(
        default_factory=lambda: ["standard", "balanced", "per_timestep", "delta_per_timestep"]
    )
    #: histogram bins per dimension for streaming quantiles: error <= (max - min) / bins
    bins: int = Field(100_000, ge=10_000)
    #: scale floor for near-constant dimensions (openpi issue #814)
    min_std: float = Field(1e-2, gt=0.0)


@section
class FilterConfig:
    #: arm-heavy when arm_motion / base_motion >= ratio_threshold ...
    ratio_threshold: float = Field(1.0, gt=0.0)
    #: ... and arm_motion >= min_arm_motion (radians of summed joint path): only keeps idle
    #: episodes out, so it sits well below the smallest reach of the embedded task (~0.27 rad)
    min_arm_motion: float = Field(0.1, ge=0.0)
    #: base travel (m) below which the ratio's denominator is floored, so a still base stays finite
    min_base_motion: float = Field(0.05, gt=0.0)
    #: histogram bins of the report's plot
    bins: int = Field(30, gt=1)


# --------------------------------------------------------------------------------------
# Model, loss, training
# --------------------------------------------------------------------------------------
@section
class ModelConfig:
    size: Literal["tiny", "dummy", "pi0"] = "tiny"
    action_horizon: int = Field(10, gt=0)
    action_dim: int = Field(_groups.MODEL_ACTION_DIM, gt=0)
    max_token_len: int = Field(16, gt=0)
    image_resolution: int = Field(32, ge=14)
    dtype: Literal["float32", "bfloat16"] = "float32"
    #: PaliGemma's SentencePiece model (``paligemma_tokenizer.model``) for the sizes with its
    #: vocabulary (``pi0``, ``dummy``); null for ``tiny``, whose hashed word tokenizer needs no file
    tokenizer_path: str | None = None
    #: image inputs beyond the dataset's cameras, fed as masked-out blanks (LeRobot's pi0
    #: ``empty_cameras``). A masked image is no key for any token, so blanks change nothing the model
    #: computes but its cost; openpi's checkpoints always take 3 (base and both wrists).
    empty_cameras: int = Field(0, ge=0)
    #: layout groups whose state dims the policy does not see (fed as 0 after normalising, the
    #: dataset mean). A state that holds the last command (the embedded task's base velocity) lets
    #: a policy copy it instead of reading the scene (the "copycat" shortcut of imitation learning).
    #: Default: R1Pro's ``base`` (its state is the realised base velocity); a layout without one sets [].
    state_hidden: list[str] = Field(default_factory=lambda: ["base"])


Strategy = Literal["uniform", "per_group", "per_dimension", "delta"]
MaskNormalization = Literal["token", "sample", "diluted", "none"]


@section
class LossConfig:
    strategy: Strategy = "uniform"
    mask_normalization: MaskNormalization = "token"
    #: raw weight per group name; groups not named weigh 1.0
    group_weights: dict[str, float] = Field(default_factory=dict)
    #: explicit per-dimension weights (real_action_dim of them), for ``per_dimension``
    dimension_weights: list[float] | None = None
    delta_alpha: float = 0.2
    delta_beta: float = 1.0
    delta_cap: float = 0.5


@section
class OptimizerConfig:
    peak_lr: float = Field(6e-3, gt=0.0, allow_inf_nan=False)
    decay_lr: float = Field(1e-4, ge=0.0, allow_inf_nan=False)
    warmup_steps: int = Field(20, ge=0)
    decay_steps: int = Field(3000, gt=0)
    clip_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    #: Adam's moment decays: in [0, 1), or the moments never forget (1) or grow without bound
    b1: float = Field(0.9, ge=0.0, lt=1.0)
    b2: float = Field(0.95, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(1e-10, ge=0.0, allow_inf_nan=False)
    ema_decay: float | None = Field(0.99, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _schedule(self):
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        return self


@section
class PhaseConfig:
    steps: int = Field(gt=0)
    #: ``train`` (all training episodes of split.json) or ``arm_heavy`` (arm_heavy.json)
    episodes: Literal["train", "arm_heavy"] = "train"


@section
class TrainConfig:
    backend: Literal["jax", "torch"] = "jax"
    seed: int = 0
    batch_size: int = Field(16, gt=0)
    norm_stats: NormVariant = "standard"
    #: train the layout's delta-mask dims as ``action − state_t`` (openpi ``DeltaActions``); needs
    #: ``norm_stats: delta_per_timestep``, the statistics of those deltas
    delta_actions: bool = False
    #: params to start from (an openpi-path ``.npz``, e.g. another run's final/params.npz); null = random init
    init_from: str | None = None
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    #: at least one phase: an empty curriculum would export the untrained init as a result
    curriculum: list[PhaseConfig] = Field(default_factory=lambda: [PhaseConfig(steps=3000)], min_length=1)
    checkpoint_every: int = Field(500, gt=0)
    #: complete checkpoints kept on disk (the newest ones)
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    #: JAX: devices each parameter is sharded over (the mesh's ``fsdp`` axis; the rest is ``data``).
    #: 1 = params replicated on every device. Must divide the global device count.
    fsdp_devices: int = Field(1, gt=0)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.curriculum)


@section
class EvalConfig:
    num_flow_samples: int = Field(2, gt=0)
    num_steps: int = Field(10, gt=0)
    rollouts: int = Field(90, ge=0)
    #: control steps before a rollout counts as failed (the expert needs at most ~90 in the default task)
    max_steps: int = Field(150, gt=0)
    rollout_seed: int = 10_000
    n_action_steps: int = Field(4, gt=0)
    #: closed loop: the flow's starting noise at each replan. ``fresh``: a new draw per call (keyed by
    #: scene and call); ``per_scene``: one draw per scene, reused at every replan, so the policy is a
    #: fixed function of what it sees and consecutive chunks do not disagree by sampling alone;
    #: ``zero``: the noise distribution's mean.
    noise: Literal["fresh", "per_scene", "zero"] = "fresh"
    #: scenes rolled out in lockstep, the policy sampling one batch of chunks for all of them
    parallel_envs: int = Field(90, gt=0)
    videos: int = Field(2, ge=0)
    #: offline: validation chunks per sampling batch, and every stride-th batch is scored
    batch_size: int = Field(64, gt=0)
    offline_stride: int = Field(8, gt=0)


@section
class AblationConfig:
    """The run matrix: every variant is trained and evaluated once per seed.

    A variant is a set of dotted-key overrides of these params (``{}`` = the params as
    they are); ``for_run`` applies one. DVC's ``matrix`` iterates ``variants`` × ``seeds``.
    """

    seeds: list[int] = Field(default_factory=lambda: [0])
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"main": {}})

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in v.items():
            if not name.replace("_", "").isalnum():
                raise ValueError(
                    f"variant name {name!r}: use letters, digits and '_' (it names a run directory)"
                )
            bad = [k for k in overrides if k.split(".")[0] in ("ablation", "dataset", "layout")]
            if bad:
                raise ValueError(f"{name}: a variant may not override {bad} (they are shared by all runs)")
        return v


@section
class ReportConfig:
    """What the paper compares: each question lists variants, the first being its reference."""

    reference: str = "main"
    questions: dict[str, list[str]] = Field(default_factory=dict)
    #: variants whose per-group training curves the paper plots beside the reference
    loss_curves: list[str] = Field(default_factory=list)

    @field_validator("questions")
    @classmethod
    def _two_or_more(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for q, names in v.items():
            if len(names) < 2:
                raise ValueError(f"{q}: a question compares at least two variants, got {names}")
        return v


@section
class Params:
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    normstats: NormStatsConfig = Field(default_factory=NormStatsConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ablation: AblationConfig = Field(default_factory=lambda: AblationConfig())
    report: ReportConfig = Field(default_factory=lambda: ReportConfig())

    @model_validator(mode="after")
    def _cross_checks(self):
        try:
            layout = self.layout.build()
        except _groups.LayoutError as e:
            raise ValueError(f"layout: {e}") from None
        _check_loss(self)
        named = {self.report.reference, *self.report.loss_curves}
        named |= {v for names in self.report.questions.values() for v in names}
        unknown = sorted(named - set(self.ablation.variants))
        if unknown:
            raise ValueError(f"report: variants {unknown} are not in ablation.variants")
        n_cameras = len(self.dataset.cameras) + self.model.empty_cameras
        if n_cameras > len(_model_config.CAMERAS):
            raise ValueError(
                f"dataset.cameras ({len(self.dataset.cameras)}) + model.empty_cameras "
                f"({self.model.empty_cameras}): pi0 has {len(_model_config.CAMERAS)} image inputs"
            )
        if layout.real_action_dim > self.model.action_dim:
            raise ValueError(
                f"model.action_dim {self.model.action_dim} < layout real_action_dim {layout.real_action_dim}"
            )
        if self.train.delta_actions != (self.train.norm_stats == "delta_per_timestep"):
            raise ValueError(
                "train.delta_actions and train.norm_stats go together: delta actions are normalised with "
                "the statistics of the deltas (norm_stats: delta_per_timestep) and only they use them; got "
                f"delta_actions={self.train.delta_actions}, norm_stats={self.train.norm_stats!r}"
            )
        if "delta_per_timestep" in self.normstats.variants or self.train.delta_actions:
            try:
                layout.delta_mask()
            except _groups.LayoutError as e:
                raise ValueError(str(e)) from None
        return self


def _check_loss(params: Params) -> None:
    """The loss's rules (group names, weights, fields the strategy ignores, delta knobs), written once
    in ``loss.LossSpec`` and applied at load time, so that ``bpi0 layout``, the variant validation and
    training agree on what is valid."""
    from balanced_pi0.loss import LossSpec, LossSpecError

    try:
        LossSpec.from_config(params)
    except LossSpecError as e:
        raise ValueError(str(e)) from None


_ADAPTER = TypeAdapter(Params)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"]
        if e["type"] == "literal_error":
            msg = "expected one of " + msg.removeprefix("Input should be ")
        elif e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        elif e["type"].startswith("value_error"):
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def from_dict(data: dict[str, Any] | None, *, source: str = "params") -> Params:
    try:
        params = _ADAPTER.validate_python(data or {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format(e)}") from None
    for variant in params.ablation.variants:  # a bad override fails at load, not mid-pipeline
        _validate_variant(params, variant)
    return params


def _validate_variant(params: Params, variant: str) -> None:
    data = to_dict(params)
    data.pop("ablation")
    data.pop("report")
    for key, value in params.ablation.variants[variant].items():
        _set_dotted(data, key, value)
    try:
        _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(f"ablation.variants.{variant}: {_format(e)}") from None


def load(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate a params file; ``overrides`` maps dotted keys to values."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return from_dict(data, source=str(path))


def for_run(params: Params, variant: str, seed: int) -> Params:
    """The params of one run of the ablation matrix: ``variant``'s overrides and ``train.seed = seed``."""
    variants = params.ablation.variants
    if variant not in variants:
        raise ConfigError(f"ablation.variants: unknown variant {variant!r}; variants are {sorted(variants)}")
    data = to_dict(params)
    for key, value in {**variants[variant], "train.seed": seed}.items():
        _set_dotted(data, key, value)
    # Not from_dict: that would re-apply every other variant on top of this one (the variants were
    # each checked against the base params when these were loaded).
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(f"ablation.variants.{variant}: {_format(e)}") from None


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a mapping")
    node[parts[-1]] = value


def to_dict(params: Params) -> dict[str, Any]:
    """Plain-data view (for run metadata)."""
    return _ADAPTER.dump_python(params, mode="json")
