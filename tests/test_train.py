"""The training loop: schedule, curriculum, exact resume, determinism, failure handling.

The loop is tested in both backends with a small flow-matching model (a linear
velocity field on the state and the noisy chunk) and a generated in-memory
dataset, so each test runs in seconds; what is under test is the loop, the
optimiser, the checkpoints and the data flow, not the architecture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from balanced_pi0 import backends, curriculum, errors, flow, io, train
from balanced_pi0 import checkpoint as ckpt
from balanced_pi0 import config as _config
from balanced_pi0.policy_io import NormStats, PolicyIO

HORIZON, REAL_DIM, RES = 4, 23, 16
BACKENDS = ("jax", "torch")


# --------------------------------------------------------------------------------------
# A small generated dataset and a resumable loader over it
# --------------------------------------------------------------------------------------
def make_episodes(num: int = 8, length: int = 12, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for ep in range(num):
        t = np.arange(length, dtype=np.float32)[:, None]
        phase = rng.uniform(0, 2 * np.pi, REAL_DIM).astype(np.float32)
        actions = np.sin(0.3 * t + phase) + 0.1 * ep
        out[ep] = {"state": actions + 0.05, "actions": actions.astype(np.float32)}
    return out


class ToyLoader:
    """Random (episode, frame) chunks with LeRobot's end-of-episode padding; resumable by cursor."""

    def __init__(
        self, episodes: dict, ids: np.ndarray, seed: int, batch_size: int = 3, nan_at: int | None = None
    ):
        self.episodes, self.ids, self.seed, self.batch_size = episodes, np.asarray(ids), seed, batch_size
        self.cursor, self.nan_at = 0, nan_at

    def batches(self):
        while True:  # advance before yielding: state_dict() must count the batch handed out
            self.cursor += 1
            yield self._batch(self.cursor - 1)

    def _batch(self, cursor: int) -> dict:
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, cursor)))
        eps = rng.choice(self.ids, size=self.batch_size)
        states, chunks, pads, frames = [], [], [], []
        for ep in eps:
            data = self.episodes[int(ep)]
            length = len(data["actions"])
            f = int(rng.integers(length))
            idx = np.arange(f, f + HORIZON)
            pads.append(idx >= length)
            chunks.append(data["actions"][np.minimum(idx, length - 1)])
            states.append(data["state"][f])
            frames.append(f)
        actions = np.stack(chunks)
        if self.nan_at is not None and cursor == self.nan_at:
            actions[0, 0, 0] = np.nan
        return {
            "images": {"head": rng.integers(0, 256, (self.batch_size, RES, RES, 3), dtype=np.uint8)},
            "state": np.stack(states),
            "actions": actions,
            "action_is_pad": np.stack(pads),
            "prompt": ["reach"] * self.batch_size,
            "episode_index": eps.astype(np.int64),
            "frame_index": np.asarray(frames, dtype=np.int64),
        }

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


def policy_io(episodes: dict) -> PolicyIO:
    def stats(x):
        return NormStats(x.mean(0), x.std(0), x.min(0), x.max(0))

    all_states = np.concatenate([e["state"] for e in episodes.values()])
    all_actions = np.concatenate([e["actions"] for e in episodes.values()])

    def tokenize(prompt: str):
        tokens = np.zeros(8, np.int32)
        raw = np.frombuffer(prompt.encode()[:8], np.uint8)
        tokens[: len(raw)] = raw
        return tokens, tokens > 0

    return PolicyIO(
        norm_stats={"state": stats(all_states), "actions": stats(all_actions)},
        min_std=1e-2,
        action_dim=32,
        image_resolution=RES,
        camera_map={"head": "base_0_rgb"},
        model_cameras=("base_0_rgb", "left_wrist_0_rgb"),
        tokenize=tokenize,
    )


# --------------------------------------------------------------------------------------
# A linear velocity field, one per backend
# --------------------------------------------------------------------------------------
def jax_model(config, rngs):
    import jax.numpy as jnp
    from flax import nnx

    class LinearFlow(nnx.Module):
        def __init__(self):
            d, h = config.action_dim, config.action_horizon
            self.h, self.d = h, d
            self.net = nnx.Linear(h * d + d + 1, h * d, rngs=rngs)

        def velocity(self, obs, x_t, t):
            b = x_t.shape[0]
            z = jnp.concatenate([x_t.reshape(b, -1), obs["state"], t[:, None]], axis=-1)
            return self.net(z).reshape(b, self.h, self.d)

        def compute_loss(self, obs, actions, noise, time):
            t = time[:, None, None]
            x_t = t * noise + (1 - t) * actions
            return (self.velocity(obs, x_t, time) - (noise - actions)) ** 2

        def sample_actions(self, obs, noise, num_steps):
            x, dt = noise, 1.0 / num_steps
            for i in range(num_steps):
                t = jnp.full((x.shape[0],), 1.0 - i * dt)
                x = x - dt * self.velocity(obs, x, t)
            return x

    return LinearFlow()


def torch_model(config):
    import torch

    class LinearFlow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            d, h = config.action_dim, config.action_horizon
            self.h, self.d = h, d
            self.net = torch.nn.Linear(h * d + d + 1, h * d)

        def velocity(self, obs, x_t, t):
            b = x_t.shape[0]
            z = torch.cat([x_t.reshape(b, -1), obs["state"], t[:, None]], dim=-1)
            return self.net(z).reshape(b, self.h, self.d)

        def compute_loss(self, obs, actions, noise, time):
            t = time[:, None, None]
            x_t = t * noise + (1 - t) * actions
            return (self.velocity(obs, x_t, time) - (noise - actions)) ** 2

        def sample_actions(self, obs, noise, num_steps):
            x, dt = noise, 1.0 / num_steps
            for i in range(num_steps):
                t = torch.full((x.shape[0],), 1.0 - i * dt)
                x = x - dt * self.velocity(obs, x, t)
            return x

    return LinearFlow()


def make_params(backend: str, curriculum=None, **train_overrides) -> _config.Params:
    data = {
        "model": {"size": "tiny", "action_horizon": HORIZON, "image_resolution": RES, "max_token_len": 8},
        "train": {
            "backend": backend,
            "batch_size": 3,
            "curriculum": curriculum or [{"steps": 6, "episodes": "train"}],
            "checkpoint_every": 2,
            "log_every": 1,
            "optimizer": {"warmup_steps": 2, "decay_steps": 20, "peak_lr": 1e-2, "decay_lr": 1e-3},
            **train_overrides,
        },
    }
    return _config.from_dict(data)


def toy_api(backend: str):
    if backend == "jax":
        from flax import nnx

        from balanced_pi0.backends import ModelApi

        def export(model):
            pure = nnx.state(model, nnx.Param).to_pure_dict()
            return {f"net/{k}": np.asarray(v) for k, v in pure["net"].items()}

        def load(model, flat):
            nnx.update(model, nnx.State({"net": {k.split("/")[1]: v for k, v in flat.items()}}))

        return ModelApi(build=jax_model, observation=dict, export=export, load=load)
    from balanced_pi0.backends import ModelApi

    def export_torch(model):
        return {n: p.detach().numpy() for n, p in model.named_parameters()}

    def load_torch(model, flat):
        import torch

        model.load_state_dict({k: torch.from_numpy(v) for k, v in flat.items()}, strict=True)

    return ModelApi(build=torch_model, observation=dict, export=export_torch, load=load_torch)


def make_backend(params):
    """The toy model in ``params.train.backend``. A JAX backend shards every 2-D param under FSDP,
    however small (the toy's are); with ``fsdp_devices`` 1 (every test but the FSDP ones) nothing is."""
    extra = {"fsdp_min_bytes": 0} if params.train.backend == "jax" else {}
    return backends.make_backend(params, model_api=toy_api(params.train.backend), **extra)


def run(params, run_dir: Path, stop_after=None, nan_at=None, episode_sets=None, loaders=None) -> int:
    episodes = make_episodes()
    sets = episode_sets or {"train": np.arange(6), "arm_heavy": np.array([1, 4])}
    phases = curriculum.build_curriculum(params.train.curriculum, sets)

    def make_loader(ids, seed):
        loader = ToyLoader(episodes, ids, seed, params.train.batch_size, nan_at=nan_at)
        if loaders is not None:
            loaders.append(loader)
        return loader

    batches = curriculum.CurriculumBatches(phases, make_loader, params.train.seed)
    return train.run_loop(
        params,
        make_backend(params),
        batches,
        policy_io(episodes).model_batch,
        run_dir,
        stop_after=stop_after,
        progress=False,
    )


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------
# Backends: learning, determinism, resume, failure
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_falls_on_a_fixed_batch(backend):
    params = make_params(backend, optimizer={"warmup_steps": 0, "decay_steps": 40, "peak_lr": 3e-3})
    episodes = make_episodes()
    batch = policy_io(episodes).model_batch(ToyLoader(episodes, np.arange(6), 0)._batch(0))
    batch["noise"], batch["time"] = flow.sample_noise_time(0, 0, 3, HORIZON, 32)
    b = make_backend(params)
    b.init()
    losses = [b.train_step(batch, s)["loss"] for s in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_params_give_identical_checkpoint_bytes(backend, tmp_path):
    params = make_params(backend)
    assert run(params, tmp_path / "a") == 6
    assert run(params, tmp_path / "b") == 6
    a, b = tree_digest(tmp_path / "a" / "checkpoints"), tree_digest(tmp_path / "b" / "checkpoints")
    assert a == b and len(a) > 0
    assert tree_digest(tmp_path / "a" / "final") == tree_digest(tmp_path / "b" / "final")
    # keep_checkpoints=2 of the 3 written
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "a" / "checkpoints")] == [4, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(backend, tmp_path):
    curriculum = [{"steps": 3, "episodes": "arm_heavy"}, {"steps": 4, "episodes": "train"}]
    params = make_params(backend, curriculum=curriculum)
    run(params, tmp_path / "full")
    # killed after step 5 (index 4): the newest checkpoint is step 4, one step is replayed
    assert run(params, tmp_path / "resumed", stop_after=5) == 5
    assert not (tmp_path / "resumed" / "final").exists()
    assert run(params, tmp_path / "resumed") == 7
    assert tree_digest(tmp_path / "full" / "final") == tree_digest(tmp_path / "resumed" / "final")
    assert tree_digest(tmp_path / "full" / "checkpoints") == tree_digest(tmp_path / "resumed" / "checkpoints")
    # the metrics of the replayed step are logged once
    loss_tsv = (tmp_path / "resumed" / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in loss_tsv[1:]] == list(range(7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_loss_names_step_and_episodes_and_keeps_last_checkpoint(backend, tmp_path):
    params = make_params(backend)
    with pytest.raises(errors.NonFiniteLossError, match=r"step 3: non-finite loss .* episodes \["):
        run(params, tmp_path, nan_at=3)
    ckpts = tmp_path / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(ckpts)] == [2]
    assert not list(ckpts.glob(".tmp-*")) and not (tmp_path / "final").exists()


def test_checkpoints_of_other_params_are_not_resumed(tmp_path):
    run(make_params("torch"), tmp_path / "changed", stop_after=4)
    run(make_params("torch", seed=1), tmp_path / "changed")
    run(make_params("torch", seed=1), tmp_path / "fresh")
    assert tree_digest(tmp_path / "changed" / "final") == tree_digest(tmp_path / "fresh" / "final")
    loss_tsv = (tmp_path / "changed" / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(loss_tsv) == 1 + 6


def test_checkpoints_without_their_log_are_not_resumed(tmp_path):
    """DVC deletes a stage's logs before a rerun; a resumed run could not log the early steps again."""
    run(make_params("torch"), tmp_path / "logless", stop_after=4)
    shutil.rmtree(tmp_path / "logless" / "live")
    run(make_params("torch"), tmp_path / "logless")
    run(make_params("torch"), tmp_path / "fresh")
    assert tree_digest(tmp_path / "logless") == tree_digest(tmp_path / "fresh")


def test_logged_files_hold_no_wall_clock_metric(tmp_path):
    run(make_params("torch"), tmp_path)
    live = tmp_path / "live"
    assert "samples_per_s" not in json.loads((live / "metrics.json").read_text())
    assert not list(live.rglob("samples_per_s*"))


def test_interrupted_checkpoint_write_leaves_no_checkpoint(tmp_path):
    class Failing:
        def save(self, directory):
            Path(directory).mkdir()
            (Path(directory) / "half").write_text("x")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 4, Failing(), {"step": 4}, keep=2)
    assert ckpt.list_checkpoints(tmp_path) == []
    ckpt.remove_partial_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_returns_a_chunk_from_the_trained_params(backend, tmp_path):
    params = make_params(backend)
    b = make_backend(params)
    b.init()
    episodes = make_episodes()
    obs = policy_io(episodes).observation(ToyLoader(episodes, np.arange(6), 0)._batch(0))
    noise = flow.sample_noise_time(0, 0, 3, HORIZON, 32)[0]
    actions = b.sample(obs, noise, num_steps=5)
    assert actions.shape == (3, HORIZON, 32) and np.all(np.isfinite(actions))


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_from_starts_from_the_given_params(backend, tmp_path):
    params = make_params(backend)
    run(params, tmp_path / "a")
    flat = io.load_params_npz(tmp_path / "a" / "final" / "params.npz")
    b = make_backend(params)
    b.init(flat)
    b.export(tmp_path / "b")  # the EMA starts at the loaded params
    again = io.load_params_npz(tmp_path / "b" / "params.npz")
    assert again.keys() == flat.keys()
    for k in flat:
        np.testing.assert_array_equal(again[k], flat[k])


# --------------------------------------------------------------------------------------
# Data parallel and FSDP: virtual JAX devices and processes take the same steps as one device
# --------------------------------------------------------------------------------------
_DATA_PARALLEL = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
import test_train
fsdp = int(sys.argv[2])
losses, shardings = test_train.data_parallel_losses(fsdp_devices=fsdp, with_shardings=True)
print(json.dumps({"devices": jax.device_count(), "losses": losses, "shardings": shardings}))
"""


def data_parallel_losses(
    backend: str = "jax", steps: int = 4, fsdp_devices: int = 1, with_shardings: bool = False
):
    params = make_params(backend, batch_size=4, fsdp_devices=fsdp_devices)
    episodes = make_episodes()
    io = policy_io(episodes)
    loader = ToyLoader(episodes, np.arange(6), 0, batch_size=4).batches()
    b = make_backend(params)
    b.init()
    losses = []
    for step in range(steps):
        batch = io.model_batch(next(loader))
        batch["noise"], batch["time"] = flow.sample_noise_time(0, step, 4, HORIZON, 32)
        losses.append(b.train_step(batch, step)["loss"])
    if not with_shardings:
        return losses
    import jax

    specs = {
        "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path): str(
            leaf.sharding.spec
        )
        for path, leaf in jax.tree_util.tree_leaves_with_path(b.state)
        if hasattr(leaf, "sharding")
    }
    return losses, specs


def _run_on_devices(devices: int, fsdp_devices: int = 1) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL, str(Path(__file__).parent), str(fsdp_devices)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_jax_devices_match_one_device_with_the_same_global_batch():
    import jax

    two = _run_on_devices(2)
    assert (jax.device_count(), two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["losses"], data_parallel_losses(), rtol=1e-5)
    assert set(two["shardings"].values()) == {"P()"}  # fsdp 1: replicated


def test_fsdp_shards_params_and_takes_the_same_steps():
    """A (data 2, fsdp 2) mesh on 4 virtual devices: the 2-D kernel, its Adam moments and its EMA
    are split over ``fsdp``, biases and counts are replicated, and the losses are one device's."""
    four = _run_on_devices(4, fsdp_devices=2)
    assert four["devices"] == 4
    np.testing.assert_allclose(four["losses"], data_parallel_losses(), rtol=1e-5)
    sharded = sorted(k for k, v in four["shardings"].items() if "fsdp" in v)
    assert any(k.startswith("params/") and "kernel" in k for k in sharded), four["shardings"]
    assert any(k.startswith("ema/") and "kernel" in k for k in sharded), four["shardings"]
    assert sum("opt_state" in k and "kernel" in k for k in sharded) == 2  # Adam's mu and nu
    assert not any("bias" in k for k in sharded)


def test_fsdp_devices_must_divide_the_device_count():
    from balanced_pi0.errors import InputError

    with pytest.raises(InputError, match="fsdp_devices 3 does not divide the 1 devices"):
        make_backend(make_params("jax", fsdp_devices=3))


_MULTI_HOST = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import jax
import test_train
from balanced_pi0.backends.jax.train_step import init_distributed
init_distributed()
run_dir, stop_after = Path(sys.argv[2]), (int(sys.argv[3]) or None)
params = test_train.make_params("jax", batch_size=4, fsdp_devices=2)
step = test_train.run(params, run_dir, stop_after=stop_after)
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "devices": jax.device_count(), "step": step}))
"""


def _run_multi_host(run_dir: Path, stop_after: int = 0) -> list[dict]:
    """Two processes, two virtual CPU devices each, joined by ``jax.distributed`` (gloo) into
    one (data 2, fsdp 2) mesh, training into one shared run directory."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
        }
        cmd = [sys.executable, "-c", _MULTI_HOST, str(Path(__file__).parent), str(run_dir), str(stop_after)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_two_hosts_with_fsdp_train_resume_and_export_as_one_device(tmp_path):
    """The whole loop across two processes: collective orbax checkpoints in a shared directory,
    a kill and a resume from them, the gathered export; the final params are one device's."""
    single = make_params("jax", batch_size=4)
    run(single, tmp_path / "one")
    first = _run_multi_host(tmp_path / "multi", stop_after=3)
    assert [(r["process"], r["processes"], r["devices"], r["step"]) for r in first] == [
        (0, 2, 4, 3),
        (1, 2, 4, 3),
    ]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "multi" / "checkpoints")] == [2]
    assert [r["step"] for r in _run_multi_host(tmp_path / "multi")] == [6, 6]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "multi" / "checkpoints")] == [4, 6]
    one = io.load_params_npz(tmp_path / "one" / "final" / "params.npz")
    multi = io.load_params_npz(tmp_path / "multi" / "final" / "params.npz")
    assert one.keys() == multi.keys()
    for k in one:
        np.testing.assert_allclose(multi[k], one[k], rtol=1e-5, atol=1e-7)
    loss = (tmp_path / "multi" / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in loss[1:]] == list(range(6))  # logged once, by process 0


_DDP_RANK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_train
print(json.dumps({"losses": test_train.data_parallel_losses("torch")}))
"""


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch():
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-c", _DDP_RANK, str(Path(__file__).parent)]
        ranks.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=300) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), [err[-2000:] for _, err in outs]
    losses = [json.loads(out.strip().splitlines()[-1])["losses"] for out, _ in outs]
    np.testing.assert_allclose(losses[0], losses[1], rtol=0)  # every rank holds the global loss
    np.testing.assert_allclose(losses[0], data_parallel_losses("torch"), rtol=1e-5)


# --------------------------------------------------------------------------------------
# The real tiny pi0 (slow: model construction and compilation take tens of seconds)
# --------------------------------------------------------------------------------------
def pi0_params(backend: str, **train_overrides) -> _config.Params:
    return _config.from_dict(
        {
            "model": {
                "size": "tiny",
                "action_horizon": HORIZON,
                "image_resolution": RES,
                "max_token_len": 24,
            },
            "dataset": {"cameras": ["head"]},
            "train": {"backend": backend, "batch_size": 3, **train_overrides},
        }
    )


def pi0_batch(step: int) -> dict:
    from balanced_pi0.model_config import CAMERAS, WORD_VOCAB
    from balanced_pi0.tokenizer import WordTokenizer

    episodes = make_episodes()
    pio = policy_io(episodes)
    pio = PolicyIO(
        **{**pio.__dict__, "model_cameras": CAMERAS, "tokenize": WordTokenizer(24, WORD_VOCAB).tokenize}
    )
    batch = pio.model_batch(ToyLoader(episodes, np.arange(6), 0)._batch(step))
    batch["noise"], batch["time"] = flow.sample_noise_time(0, step, 3, HORIZON, 32)
    return batch


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_pi0_loss_falls_on_a_fixed_batch(backend):
    params = pi0_params(backend, optimizer={"warmup_steps": 0, "decay_steps": 40, "peak_lr": 1e-3})
    b = backends.make_backend(params)
    b.init()
    batch = pi0_batch(0)
    losses = [b.train_step(batch, s)["loss"] for s in range(30)]
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.slow
def test_jax_and_torch_from_the_same_params_take_the_same_steps():
    """Same initial params, batches and noise: the two optimisers follow each other step by step."""
    opt = {"warmup_steps": 2, "decay_steps": 20, "peak_lr": 1e-3}
    jax_b = backends.make_backend(pi0_params("jax", optimizer=opt))
    jax_b.init()
    initial = jax_b.api.export(jax_b.model())
    torch_b = backends.make_backend(pi0_params("torch", optimizer=opt))
    torch_b.init(initial)
    for step in range(6):
        batch = pi0_batch(step)
        a, b = jax_b.train_step(batch, step), torch_b.train_step(batch, step)
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3), (step, a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=2e-3), (
            step,
            a["grad_norm"],
            b["grad_norm"],
        )


# --------------------------------------------------------------------------------------
# The stage on a LeRobot dataset prepared by the pipeline's own stages
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimLikeEpisode:
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict
    success: bool = True
    seed: int = 0
    arm_heavy: bool = False


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, str]:
    """Six 15-frame episodes through fetch's writer, the split, normstats and filter."""
    from balanced_pi0.data.split import make_split, write_split
    from balanced_pi0.data.writer import write_dataset
    from balanced_pi0.prep import filter as filter_stage
    from balanced_pi0.prep import normstats

    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    cams = ("head", "left_wrist", "right_wrist")
    episodes = []
    for e in range(6):
        t = np.arange(15, dtype=np.float32)[:, None]
        action = np.sin(0.2 * t + rng.uniform(0, 6, REAL_DIM)).astype(np.float32)
        action[:, :3] *= 0.1 if e % 2 else 1.0  # odd episodes barely move the base
        images = {c: rng.integers(0, 256, (15, RES, RES, 3), dtype=np.uint8) for c in cams}
        episodes.append(SimLikeEpisode("reach the cube", action + 0.01, action, images, seed=e))
    paths = {
        k: str(root / v)
        for k, v in [
            ("dataset", "dataset"),
            ("split", "split.json"),
            ("norm_stats", "norm_stats"),
            ("arm_heavy", "arm_heavy.json"),
        ]
    }
    write_dataset(episodes, paths["dataset"], repo_id="test/train", fps=10, cameras=cams)
    write_split(paths["split"], make_split(list(range(6)), 0.34, 0))
    params = stage_params("jax")
    normstats.run(params, paths["dataset"], paths["split"], paths["norm_stats"])
    filter_stage.run(params, paths["dataset"], paths["split"], paths["arm_heavy"], str(root / "filter"))
    return paths


def stage_params(backend: str) -> _config.Params:
    return _config.from_dict(
        {
            "model": {
                "size": "tiny",
                "action_horizon": HORIZON,
                "image_resolution": RES,
                "max_token_len": 24,
            },
            "normstats": {"bins": 10_000},
            "train": {
                "backend": backend,
                "batch_size": 2,
                "checkpoint_every": 2,
                "log_every": 1,
                "curriculum": [{"steps": 2, "episodes": "arm_heavy"}, {"steps": 3, "episodes": "train"}],
                "optimizer": {"warmup_steps": 1, "decay_steps": 5},
            },
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_trains_resumes_and_exports(backend, prepared, tmp_path):
    import json

    params = stage_params(backend)
    train.train(params, **prepared, out=str(tmp_path / "full"))
    train.train(params, **prepared, out=str(tmp_path / "resumed"), stop_after=3)
    train.train(params, **prepared, out=str(tmp_path / "resumed"))
    assert tree_digest(tmp_path / "full" / "final") == tree_digest(tmp_path / "resumed" / "final")
    meta = json.loads((tmp_path / "full" / "metadata.json").read_text())
    assert meta["backend"] == backend and [p["episodes"] for p in meta["curriculum"]] == [
        "arm_heavy",
        "train",
    ]
    assert meta["determinism"]["env_matches"], meta["determinism"]["env"]
    metrics = json.loads((tmp_path / "full" / "live" / "metrics.json").read_text())
    assert metrics["step"] == 4 and np.isfinite(metrics["loss"])
    assert set(metrics["group_loss"]) == {
        "base",
        "torso",
        "left_arm",
        "left_gripper",
        "right_arm",
        "right_gripper",
    }


@pytest.mark.parametrize("stage", ["train", "eval"])
def test_full_size_without_a_tokenizer_stops_before_building_the_model(
    stage, prepared, tmp_path, monkeypatch, capsys
):
    """Size pi0 with no ``model.tokenizer_path``: ``bpi0 train``/``eval`` exit 2 naming the param, and no
    backend is built (hashed word ids would otherwise feed PaliGemma's 257k vocabulary in silence)."""
    import yaml

    from balanced_pi0 import backends, cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(backends, "make_backend", no_model)  # evaluation imports it when it runs
    monkeypatch.setattr(train, "make_backend", no_model)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_config.to_dict(stage_params("jax"))))
    run_dir = tmp_path / "run"
    paths = [f"--{k.replace('_', '-')}={v}" for k, v in prepared.items()]
    if stage == "eval":
        paths = [p for p in paths if not p.startswith("--arm-heavy")]
        (run_dir / "final").mkdir(parents=True)
        (run_dir / "final" / "params.npz").write_bytes(b"")  # a trained run's file; never read here
        paths += [f"--run-dir={run_dir}", f"--out={run_dir / 'eval'}"]
    else:
        paths += [f"--out={run_dir}"]
    argv = [stage, "--params", str(params_file), "-S", "model.size=pi0", *paths]
    assert cli.main(argv) == 2
    assert "model.tokenizer_path" in capsys.readouterr().err
    assert not (run_dir / "eval" if stage == "eval" else run_dir).exists()
