"""What a training run leaves beside its checkpoints: its directory, metadata and logs.

``runs/<run>/`` holds ``checkpoints/`` (``balanced_pi0.checkpoint``), ``live/`` (dvclive
metrics and plots), ``metadata.json`` (params, data, curriculum, effective loss weights,
determinism flags, versions: nothing that depends on the clock or the machine),
``host.json`` (the machine, hidden from DVC) and ``final/params.npz``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balanced_pi0 import config as _config
from balanced_pi0.curriculum import Phase
from balanced_pi0.errors import InputError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.json"

    @property
    def host(self) -> Path:
        """The machine that trained (``hardware.probe``). Apart from metadata.json, whose bytes must
        not depend on the machine; .dvcignore hides it from DVC so dvc.lock stays host-free."""
        return self.root / "host.json"


def params_digest(params: _config.Params) -> str:
    """Fingerprint of the params a checkpoint was trained with."""
    return hashlib.sha256(json.dumps(_config.to_dict(params), sort_keys=True).encode()).hexdigest()


def run_metadata(params: _config.Params, curriculum: Sequence[Phase], norm_stats: str) -> dict:
    """What a reader needs to trust the run: params, data, the loss weights in effect, determinism
    flags, versions; no clock. The effective group weights are a property of the loss spec, the
    same at every step, so they are recorded here once rather than logged per step."""
    from importlib.metadata import version

    from balanced_pi0 import determinism
    from balanced_pi0.loss import LossSpec

    return {
        "backend": params.train.backend,
        "effective_group_weights": LossSpec.from_config(params).effective_group_weights(),
        "params": _config.to_dict(params),
        "norm_stats": f"{params.train.norm_stats}.json",
        "curriculum": [
            {
                "phase": p.index,
                "steps": [p.start, p.stop],
                "episodes": p.source,
                "num_episodes": len(p.episodes),
            }
            for p in curriculum
        ],
        "determinism": determinism.record(),
        # The CPU and GPU are named in host.json beside this file, not here: these bytes are the
        # same on every host the pins cover, so dvc.lock is too.
        "host": "host.json",
        "versions": {lib: version(lib) for lib in ("orbax-checkpoint", "lerobot", "dvclive", "safetensors")},
    }


def check_norm_stats(policy_io, params: _config.Params, path: str | Path, state_dim: int) -> None:
    """Norm stats must fit the layout (actions: [D] or per-timestep [H, D]) and the dataset's
    state width, before the first step rather than as an unnamed shape error inside it."""
    file = Path(path) / f"{params.train.norm_stats}.json"
    real, horizon = params.layout.build().real_action_dim, params.model.action_horizon
    actions = tuple(policy_io.norm_stats["actions"].mean.shape)
    if actions not in ((real,), (horizon, real)):
        raise InputError(
            f"{file}: norm_stats.actions has shape {list(actions)}, the layout needs [{real}] "
            f"or [{horizon}, {real}] (model.action_horizon x real_action_dim)"
        )
    state = tuple(policy_io.norm_stats["state"].mean.shape)
    if state != (state_dim,):
        raise InputError(
            f"{file}: norm_stats.state has shape {list(state)}, the dataset's state is [{state_dim}]"
        )


# --------------------------------------------------------------------------------------
# dvclive logs
# --------------------------------------------------------------------------------------
def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"group_loss": {"base": x}}`` → ``{"group_loss/base": x}``, as Python floats."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out.update({f"{k}/{g}": float(x) for g, x in v.items()})
        else:
            out[k] = float(v)
    return out


#: Metrics that depend on the clock: on the progress bar only, so logged files repeat byte for byte.
WALL_CLOCK_METRICS = ("samples_per_s",)


class Logger:
    """dvclive metrics (no timestamps: outputs must not depend on the clock) and a tqdm bar."""

    def __init__(self, live_dir: Path, start: int, total: int, enabled: bool = True):
        from tqdm import tqdm

        if start > 0:
            _truncate_live(live_dir, start)
        self.live = _live_class()(
            str(live_dir), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None
        )
        self.live.step = start
        self.bar = tqdm(total=total, initial=start, desc="train", disable=not enabled, dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.live.step = step
        for k, v in metrics.items():
            if k in WALL_CLOCK_METRICS:  # shown on the bar, kept out of the files DVC hashes
                continue
            self.live.log_metric(k, v, timestamp=False)
        self.live.next_step()

    def tick(self, metrics: Mapping[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.1f}", refresh=False
        )

    def close(self) -> None:
        self.bar.close()
        self.live.end()


def _live_class():
    """dvclive's ``Live``, minus a cost that grows with the run: on every ``next_step`` it re-reads
    every metric's .tsv to queue them for DVC Studio, and only then checks whether Studio is set up
    at all. Unconfigured, that parse is all waste: 15 of a 95 s training run at 300 logged steps
    here, quadratic in the run's length. With Studio configured nothing changes."""
    from dvclive import Live

    class LocalLive(Live):
        def post_data_to_studio(self) -> None:
            if "data" not in getattr(self, "_studio_events_to_skip", ()):
                super().post_data_to_studio()

    return LocalLive


def _truncate_live(live_dir: Path, start: int) -> None:
    """Drop rows a killed run logged after its last checkpoint; the resumed run logs them again."""
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        col = lines[0].split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < start]
        tsv.write_text("\n".join(kept) + "\n")
