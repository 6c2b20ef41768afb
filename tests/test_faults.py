"""Faults and bad input: each ends in a named error or a correct result, never a wrong one.

Bad input is an ``InputError`` naming the file, key or index, raised before any output is
written; a failure mid-stage leaves the previous outputs as they were. Checkpoints are
verified on read and fall back to the newest intact one; a diverging run stops without
writing a non-finite checkpoint. The loop cases run in both backends on the toy model and
toy data of ``test_train``; the stage cases on its small prepared LeRobot dataset.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import test_train
from balanced_pi0 import backends, cli, curriculum, errors, io, train
from balanced_pi0 import checkpoint as ckpt
from balanced_pi0 import config as _config
from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.errors import InputError
from balanced_pi0.evaluate import stage as eval_stage
from balanced_pi0.io import read_split
from balanced_pi0.prep import analyze, normstats
from balanced_pi0.prep import filter as filter_stage
from test_train import BACKENDS, make_params, prepared, run, stage_params, tree_digest  # noqa: F401


# --------------------------------------------------------------------------------------
# Params: every field checked at load, so `bpi0 layout` and every stage agree
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optimizer.b1=1.0", r"train\.optimizer\.b1"),
        ("train.optimizer.b1=-0.1", r"train\.optimizer\.b1"),
        ("train.optimizer.b2=1.5", r"train\.optimizer\.b2"),
        ("train.optimizer.eps=-1e-8", r"train\.optimizer\.eps"),
        ("train.optimizer.eps=0", r"train\.optimizer\.eps"),
        ("train.optimizer.weight_decay=-1", r"train\.optimizer\.weight_decay"),
        ("train.optimizer.eps=.inf", r"train\.optimizer\.eps"),
        ("train.optimizer.peak_lr=.nan", r"train\.optimizer\.peak_lr"),
        ("train.curriculum=[]", r"train\.curriculum"),
        ("train.curriculum=[{steps: 0}]", r"train\.curriculum\.0\.steps"),
        ("train.loss.group_weights={left_arm: 3}", r"group_weights: strategy 'uniform' does not use"),
        (
            "train.loss.dimension_weights=[" + ", ".join(["1"] * 23) + "]",
            r"dimension_weights: strategy 'uniform' does not use",
        ),
        ("train.loss.delta_cap=-0.5", r"delta_cap.*>= 0"),
        ("train.loss.delta_beta=-1", r"delta_beta.*>= 0"),
    ],
)
def test_bad_params_fail_at_load_naming_the_key(tmp_path, capsys, override, message):
    p = tmp_path / "params.yaml"
    p.write_text("{}\n")
    assert cli.main(["layout", "--params", str(p), "-S", override]) == 2
    assert capsys.readouterr().err.startswith("bpi0 layout: ")
    # the same params through a variant: rejected when the file is loaded, not when the run starts
    key, value = override.split("=", 1)
    p.write_text(f"ablation:\n  variants: {{main: {{}}, bad: {{{key}: {value}}}}}\n")
    assert cli.main(["layout", "--params", str(p)]) == 2
    err = capsys.readouterr().err
    assert "ablation.variants.bad" in err and re.search(message, err), err


def test_empty_curriculum_never_exports_the_untrained_init():
    with pytest.raises(InputError, match=r"train\.curriculum: no phase"):
        curriculum.build_curriculum([], {"train": np.arange(3)})


# --------------------------------------------------------------------------------------
# One strict split reader for every stage
# --------------------------------------------------------------------------------------
def _split(path: Path, train_ids, val_ids, **extra) -> Path:
    path.write_text(json.dumps({"train": train_ids, "val": val_ids, **extra}))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"train": [0, 1, 2], "val": [1, 3]}, r"episodes \[1\] are in both train and val"),
        ({"train": [0, 1], "val": [2], "num_episodes": 4}, r"do not add up to num_episodes 4"),
        ({"train": [0, 0, 1], "val": [2]}, r"'train' lists episodes \[0\] more than once"),
        ({"train": [0, True], "val": [2]}, r"'train' must be a list of episode ids"),
        ({"train": [0, -1], "val": [2]}, r"'train' must be a list of episode ids"),
        ({"train": "0,1", "val": [2]}, r"'train' must be a list"),
        ({"val": [2]}, r"missing key 'train'"),
        ({"train": [], "val": [2]}, r"'train' lists no episode"),
        ([0, 1], r"expected a JSON object"),
    ],
)
def test_split_reader_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=rf"split\.json: .*{message}"):
        read_split(path)


def test_split_reader_checks_val_and_dataset_episodes_on_request(tmp_path):
    path = _split(tmp_path / "split.json", [0, 1], [])
    assert read_split(path)["val"] == []  # statistics and filtering read train only
    with pytest.raises(InputError, match=r"split\.json: 'val' lists no episode"):
        read_split(path, need_val=True)
    with pytest.raises(InputError, match=r"split\.json: episodes \[7\] are not in the dataset"):
        read_split(_split(path, [0, 7], [1]), dataset_episodes=[0, 1, 2])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        read_split(tmp_path / "bad.json")


def _outputs_of(root: Path) -> dict[str, str]:
    return tree_digest(root) if root.exists() else {}


def test_every_stage_rejects_a_leaking_split_before_writing(prepared, tmp_path):  # noqa: F811
    split = _split(tmp_path / "leak.json", [0, 1, 2, 3], [1, 4, 5])
    params = stage_params("jax")
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.json").write_text("{}")  # a previous output, which must stay as it was
    before = _outputs_of(out)
    match = r"leak\.json: episodes \[1\] are in both train and val"
    with pytest.raises(InputError, match=match):
        normstats.run(params, prepared["dataset"], str(split), str(out / "norm_stats"))
    with pytest.raises(InputError, match=match):
        analyze.run(params, prepared["dataset"], str(split), str(out / "analyze"))
    with pytest.raises(InputError, match=match):
        filter_stage.run(params, prepared["dataset"], str(split), str(out / "arm.json"), str(out / "filter"))
    with pytest.raises(InputError, match=match):
        train.train(
            params, prepared["dataset"], str(split), prepared["arm_heavy"], prepared["norm_stats"], str(out)
        )
    run_dir = _run_dir_with_final(tmp_path / "run")
    with pytest.raises(InputError, match=match):
        eval_stage.run(
            params, prepared["dataset"], str(split), prepared["norm_stats"], str(run_dir), "x", str(out)
        )
    assert _outputs_of(out) == before


def _run_dir_with_final(run_dir: Path) -> Path:
    (run_dir / "final").mkdir(parents=True)
    io.save_params_npz(run_dir / "final" / "params.npz", {"w": np.zeros(2, np.float32)})
    return run_dir


def test_train_names_the_split_file_of_a_missing_episode_and_writes_nothing(prepared, tmp_path):  # noqa: F811
    split = _split(tmp_path / "split.json", [0, 1, 9], [2])
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"split\.json: episodes \[9\] are not in the dataset"):
        train.train(stage_params("torch"), prepared["dataset"], str(split), out=str(out), **_ns(prepared))
    assert not out.exists()  # no metadata.json, no live/


def _write_expert(path: Path, seeds) -> None:
    path.write_text(json.dumps({"per_seed": [{"seed": s, "success": True} for s in seeds]}))


def test_eval_refuses_an_expert_of_other_scenes(prepared, tmp_path):  # noqa: F811
    """Ratios against the expert compare the same scenes: an expert run at another
    eval.rollout_seed (or count) stops the eval, naming the file, before anything is written."""
    params = stage_params("jax")
    seeds = eval_stage.rollout_seeds(params)
    run_dir = _run_dir_with_final(tmp_path / "run")
    out = tmp_path / "eval"
    args = (prepared["dataset"], prepared["split"], prepared["norm_stats"], str(run_dir))
    for name, other in [("shifted", [s + 40_000 for s in seeds]), ("fewer", seeds[:-1]), ("none", None)]:
        expert = tmp_path / f"{name}.json"
        if other is None:
            expert.write_text("{}")
        else:
            _write_expert(expert, other)
        with pytest.raises(
            InputError,
            match=rf"{name}\.json: the expert's rollouts are of .*, this eval's of "
            rf"{len(seeds)} scenes \(seeds {seeds[0]}\.\.{seeds[-1]}\)",
        ):
            eval_stage.run(params, *args, str(expert), str(out))
    assert not out.exists()


def _ns(prepared):  # noqa: F811
    return {"arm_heavy": prepared["arm_heavy"], "norm_stats": prepared["norm_stats"]}


def test_eval_needs_validation_episodes(prepared, tmp_path):  # noqa: F811
    split = _split(tmp_path / "split.json", [0, 1, 2, 3, 4, 5], [])
    run_dir = _run_dir_with_final(tmp_path / "run")
    with pytest.raises(InputError, match=r"split\.json: 'val' lists no episode"):
        eval_stage.run(
            stage_params("jax"),
            prepared["dataset"],
            str(split),
            prepared["norm_stats"],
            str(run_dir),
            "x",
            str(tmp_path / "eval"),
        )
    assert not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------------------
# Shapes named up front: parquet vs info.json, norm stats vs layout and horizon
# --------------------------------------------------------------------------------------
def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst) if Path(src).is_dir() else shutil.copy(src, dst)
    return dst


def test_parquet_width_not_matching_info_json_is_named(prepared, tmp_path):  # noqa: F811
    ds = _copy(prepared["dataset"], tmp_path / "ds")
    info_path = ds / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["action"]["shape"] = [22]
    info_path.write_text(json.dumps(info))
    match = r"\.parquet: column 'action' is 23 wide, .*info\.json says 22"
    with pytest.raises(InputError, match=match):
        load_lowdim(ds)
    out = tmp_path / "ns"
    with pytest.raises(InputError, match=match):
        normstats.run(stage_params("jax"), str(ds), prepared["split"], str(out))
    assert not out.exists()


@pytest.mark.parametrize("part", ["data", "meta/episodes", "meta/tasks.parquet"])
def test_truncated_parquet_file_is_named(prepared, tmp_path, part):  # noqa: F811
    ds = _copy(prepared["dataset"], tmp_path / "ds")
    target = ds / part if part.endswith(".parquet") else sorted((ds / part).rglob("*.parquet"))[0]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"{target.name}: unreadable parquet file"):
        load_lowdim(ds)


@pytest.mark.parametrize(
    ("variant", "shape", "message"),
    [
        ("standard", (22,), r"norm_stats\.actions has shape \[22\], the layout needs \[23\]"),
        ("per_timestep", (7, 23), r"norm_stats\.actions has shape \[7, 23\], the layout needs .*\[4, 23\]"),
        ("standard", None, r"norm_stats\.state has shape \[22\], the dataset's state is \[23\]"),
    ],
)
def test_norm_stats_of_the_wrong_shape_are_named_before_training(prepared, tmp_path, variant, shape, message):  # noqa: F811
    ns = _copy(prepared["norm_stats"], tmp_path / "ns")
    doc = json.loads((ns / f"{variant}.json").read_text())
    key, shape = ("actions", shape) if shape is not None else ("state", (22,))
    stats = doc["norm_stats"][key]
    for f in ("mean", "std", "q01", "q99"):
        stats[f] = np.resize(np.asarray(stats[f], np.float64), shape).tolist()
    (ns / f"{variant}.json").write_text(json.dumps(doc))
    data = _config.to_dict(stage_params("jax"))
    data["train"]["norm_stats"] = variant
    params = _config.from_dict(data)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=rf"{variant}\.json: {message}"):
        train.train(params, prepared["dataset"], prepared["split"], prepared["arm_heavy"], str(ns), str(out))
    assert not out.exists()


def test_stop_after_that_is_not_a_number_is_named(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    (tmp_path / "p.yaml").write_text("{}\n")
    rc = cli.main(["train", "--params", str(tmp_path / "p.yaml"), "--out", str(out), "--stop-after", "abc"])
    assert rc == 2 and "--stop-after: expected a whole number of steps, got 'abc'" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Params files: format errors and non-finite values are InputErrors naming the path
# --------------------------------------------------------------------------------------
def _good_npz(path: Path) -> Path:
    io.save_params_npz(path, {"a/w": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float32)})
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"not an \.npz params file|unreadable \.npz"),
        ("text", r"not an \.npz params file"),
        ("nan", r"param 'a/w' holds non-finite values"),
        ("object", r"unreadable \.npz params file|not numeric"),
        ("missing", r"params file not found \(train\.init_from\)"),
        ("directory", r"a directory, expected an \.npz params file"),
    ],
)
def test_corrupt_params_file_is_named(tmp_path, damage, message):
    path = _good_npz(tmp_path / "params.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "text":
        path.write_text("these are not params\n")
    elif damage == "nan":
        io.save_params_npz(path, {"a/w": np.full((2, 3), np.nan, np.float32)})
    elif damage == "object":
        with zipfile.ZipFile(path, "w") as zf, zf.open("a.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    with pytest.raises(InputError, match=rf"params\.npz: ({message})"):
        io.load_params_npz(path)


def test_init_from_that_does_not_fit_the_model_names_the_file():
    class Strict:
        is_primary = True

        def init(self, initial=None):
            if initial is not None:
                raise InputError("pi0 param shapes do not match the model: w: got (2,), model has (3,)")

    with pytest.raises(InputError, match=r"^other/params\.npz: pi0 param shapes do not match"):
        backends.init_backend(Strict(), {"w": np.zeros(2)}, "other/params.npz")


def test_unreadable_openpi_checkpoint_is_named(tmp_path):
    from balanced_pi0.backends.jax.params import read_openpi_params

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "_METADATA").write_text("{truncated")
    with pytest.raises(InputError, match=r"ckpt: unreadable openpi checkpoint|ckpt holds no 'params'"):
        read_openpi_params(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["tensors.safetensors", "optimizer.json"])
def test_torch_checkpoint_files_cut_short_are_named(tmp_path, name):
    run(make_params("torch"), tmp_path, stop_after=2)
    model = tmp_path / "checkpoints" / ckpt.checkpoint_name(2) / "model"
    (model / name).write_bytes((model / name).read_bytes()[:-40])
    backend = test_train.make_backend(make_params("torch"))
    backend.init()
    with pytest.raises(InputError, match=rf"{name}: unreadable"):
        backend.restore(model)


# --------------------------------------------------------------------------------------
# Checkpoints: killed, corrupted and diverged runs, in both backends
# --------------------------------------------------------------------------------------
_FULL: dict[str, dict[str, str]] = {}


def _uninterrupted(backend: str, tmp_path_factory) -> dict[str, str]:
    if backend not in _FULL:
        root = tmp_path_factory.mktemp(f"full-{backend}")
        run(make_params(backend), root)
        _FULL[backend] = tree_digest(root / "final")
    return _FULL[backend]


def _damage(checkpoint: Path, how: str) -> None:
    """Flip 40 bytes (same size) or cut the largest file of the checkpoint's model in half, or
    edit its train state (step and loader position)."""
    if how == "state":
        target = checkpoint / ckpt.STATE_FILE
        target.write_text(target.read_text().replace('"step": 4', '"step": 5'))
        return
    target = max(
        (p for p in (checkpoint / "model").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(target.read_bytes())
    if how == "flip":
        mid = len(data) // 2
        data[mid : mid + 40] = bytes(b ^ 0xFF for b in data[mid : mid + 40])
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "state"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(
    backend, how, tmp_path, tmp_path_factory, capsys
):
    params = make_params(backend)
    assert run(params, tmp_path, stop_after=4) == 4
    ckpts = tmp_path / "checkpoints"
    _damage(ckpts / ckpt.checkpoint_name(4), how)
    assert "checksum mismatch" in ckpt.verify_checkpoint(ckpts / ckpt.checkpoint_name(4))
    assert run(params, tmp_path) == 6
    err = capsys.readouterr().err
    assert f"{ckpt.checkpoint_name(4)}: skipped (checksum mismatch" in err
    assert f"resuming from {ckpts / ckpt.checkpoint_name(2)}" in err
    assert tree_digest(tmp_path / "final") == _uninterrupted(backend, tmp_path_factory)
    assert all(ckpt.verify_checkpoint(p) is None for _, p in ckpt.list_checkpoints(ckpts))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_intact_checkpoint_stops_naming_each_and_changes_nothing(backend, tmp_path):
    params = make_params(backend)
    run(params, tmp_path, stop_after=4)
    ckpts = tmp_path / "checkpoints"
    _damage(ckpts / ckpt.checkpoint_name(4), "flip")
    (ckpts / ckpt.checkpoint_name(2) / ckpt.DIGEST_FILE).unlink()  # as a write that never completed
    before = tree_digest(tmp_path)
    with pytest.raises(
        InputError,
        match=r"no intact checkpoint .*step_00000004: checksum mismatch.*"
        r"step_00000002: no digest\.json",
    ):
        run(params, tmp_path)
    assert tree_digest(tmp_path) == before and not (tmp_path / "final").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_from_before_digests_are_retrained_not_trusted(
    backend, tmp_path, tmp_path_factory, capsys
):
    params = make_params(backend)
    run(params, tmp_path, stop_after=4)
    for _, path in ckpt.list_checkpoints(tmp_path / "checkpoints"):
        (path / ckpt.DIGEST_FILE).unlink()
    assert run(params, tmp_path) == 6
    assert (
        "checkpoints have no digest.json (written before checkpoints carried one)" in capsys.readouterr().err
    )
    assert tree_digest(tmp_path / "final") == _uninterrupted(backend, tmp_path_factory)


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_mid_write_resumes_to_the_uninterrupted_result(backend, tmp_path, tmp_path_factory):
    params = make_params(backend)
    run(params, tmp_path, stop_after=5)
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(
        ckpts / ckpt.checkpoint_name(4), ckpts / f".tmp-{ckpt.checkpoint_name(6)}"
    )  # half-written
    assert run(params, tmp_path) == 6
    assert tree_digest(tmp_path / "final") == _uninterrupted(backend, tmp_path_factory)
    assert not list(ckpts.glob(".tmp-*"))


def _poison(backend, at_step: int, what: str):
    """Wrap ``backend.train_step``: after step ``at_step`` the grad norm or the params are NaN."""
    step_fn = backend.train_step

    def train_step(batch, step):
        metrics = step_fn(batch, step)
        if step == at_step and what == "grad_norm":
            metrics["grad_norm"] = float("nan")
        elif step == at_step:
            _nan_params(backend)
        return metrics

    backend.train_step = train_step
    return backend


def _nan_params(backend) -> None:
    if backend.name == "jax":
        import jax
        import jax.numpy as jnp

        nan = jax.tree.map(lambda x: x * jnp.nan, backend.state.params)
        backend.state = type(backend.state)(nan, backend.state.opt_state, backend.state.ema)
    else:
        import torch

        with torch.no_grad():
            next(backend.model.parameters()).fill_(float("nan"))


@pytest.mark.parametrize(
    ("backend", "what"),
    [("jax", "params"), ("torch", "params"), ("jax", "grad_norm"), ("torch", "grad_norm")],
)
def test_diverged_step_stops_and_keeps_only_finite_checkpoints(backend, what, tmp_path, monkeypatch):
    params = make_params(backend)
    make = test_train.make_backend
    monkeypatch.setattr(test_train, "make_backend", lambda p: _poison(make(p), 3, what))
    message = "params after the update" if what == "params" else "grad norm nan"
    with pytest.raises(errors.NonFiniteLossError, match=rf"step 3: non-finite {message} .*episodes \["):
        run(params, tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(ckpts)] == [2] and not (tmp_path / "final").exists()
    before = tree_digest(tmp_path)
    # the rerun resumes from the good checkpoint, diverges at the same step and stops again
    with pytest.raises(errors.NonFiniteLossError, match=r"step 3: "):
        run(params, tmp_path)
    assert tree_digest(ckpts) == {
        k[len("checkpoints/") :]: v for k, v in before.items() if k.startswith("checkpoints/")
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_learning_rate_stops_without_a_non_finite_checkpoint(backend, tmp_path):
    params = make_params(backend, optimizer={"warmup_steps": 0, "decay_steps": 20, "peak_lr": 1e37})
    with pytest.raises(errors.NonFiniteLossError, match=r"step \d+: non-finite"):
        run(params, tmp_path)
    for _, path in ckpt.list_checkpoints(tmp_path / "checkpoints"):
        assert ckpt.verify_checkpoint(path) is None
        b = test_train.make_backend(params)
        b.init()
        b.restore(path / "model")
        assert b.all_finite()
    assert not (tmp_path / "final").exists()


def test_a_non_finite_state_is_never_written_as_a_checkpoint(tmp_path):
    class Diverged:
        is_primary = True

        def all_finite(self):
            return False

        def save(self, directory):  # pragma: no cover - must not be reached
            raise AssertionError("a non-finite state was saved")

    with pytest.raises(errors.NonFiniteLossError, match="no checkpoint written"):
        ckpt.write_checkpoint(tmp_path, 4, Diverged(), {"step": 4}, keep=1)
    assert ckpt.list_checkpoints(tmp_path) == []


# --------------------------------------------------------------------------------------
# eval: a broken model fails, named, instead of scoring as null
# --------------------------------------------------------------------------------------
def test_eval_stops_on_non_finite_predictions():
    class Broken:
        def sample(self, observation, noise, num_steps):
            return np.full_like(noise, np.nan)

    sampler = eval_stage.make_sampler(Broken(), 4, source="runs/x/final/params.npz")
    with pytest.raises(InputError, match=r"runs/x/final/params\.npz: the model predicts non-finite actions"):
        sampler({}, np.zeros((1, 4, 32), np.float32))


def test_eval_of_non_finite_params_writes_nothing(prepared, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    io.save_params_npz(run_dir / "final" / "params.npz", {"w": np.array([1.0, np.inf], np.float32)})
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"previous": 1}\n')
    args = (prepared["dataset"], prepared["split"], prepared["norm_stats"], str(run_dir))
    with pytest.raises(InputError, match=r"expert\.json: expert rollouts not found"):
        eval_stage.run(stage_params("jax"), *args, str(run_dir / "expert.json"), str(out))
    _write_expert(run_dir / "expert.json", eval_stage.rollout_seeds(stage_params("jax")))
    with pytest.raises(InputError, match=r"final/params\.npz: param 'w' holds non-finite values"):
        eval_stage.run(stage_params("jax"), *args, str(run_dir / "expert.json"), str(out))
    assert (out / "metrics.json").read_text() == '{"previous": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "run"]
