"""run_meta's Logger: dvclive's files, without dvclive's per-step re-read of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from balanced_pi0.run_meta import Logger


def _log(live_dir: Path, steps: int) -> None:
    logger = Logger(live_dir, 0, steps, enabled=False)
    for step in range(steps):
        logger.log(step, {"loss": 1.0 / (step + 1), "group_loss/base": 0.5 * step, "samples_per_s": 99.0})
    logger.close()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_logger_writes_what_plain_dvclive_writes(tmp_path, monkeypatch):
    """Same files, byte for byte, as dvclive's own ``Live`` given the same calls."""
    from dvclive import Live

    import balanced_pi0.run_meta as run_meta

    _log(tmp_path / "ours", 5)
    monkeypatch.setattr(run_meta, "_live_class", lambda: Live)
    _log(tmp_path / "plain", 5)
    ours, plain = _files(tmp_path / "ours"), _files(tmp_path / "plain")
    assert ours == plain
    assert "plots/metrics/loss.tsv" in ours and "metrics.json" in ours


def test_without_studio_a_step_does_not_reread_the_metrics(tmp_path, monkeypatch):
    """dvclive parses every .tsv on each step for DVC Studio (a cost quadratic in the run's
    length); with Studio not set up the logger never does."""
    from dvclive import Live

    def reread(self):
        raise AssertionError("dvclive re-read the logged metrics")

    monkeypatch.setattr(Live, "_get_live_data", reread)
    _log(tmp_path / "live", 4)
    monkeypatch.setattr("balanced_pi0.run_meta._live_class", lambda: Live)
    with pytest.raises(AssertionError, match="re-read"):  # plain dvclive does: the guard is live
        _log(tmp_path / "plain", 4)
