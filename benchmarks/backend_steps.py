"""Do the two backends train alike? Both from the same initial params, on the pipeline's batches.

    uv run python benchmarks/backend_steps.py [--steps 60] [--every 10] [--params params.yaml] \
        [--dataset data/dataset --split data/split.json --norm-stats data/norm_stats]

The JAX backend is initialised from ``train.seed``; its params (by openpi path) initialise the
PyTorch backend. Both then take the reference's steps (its params, learning rate schedule, batches
from the first curriculum phase's loader, flow noise and time of each step) and the script prints
each one's loss and gradient norm side by side, then the largest relative differences of the final
params. Identical maths agrees to float rounding at first; at a high learning rate the rounding
differences then grow, as in any chaotic training run, so agreement over the first tens of steps is
what shows that the two backends compute the same update. What a run of 2000 steps then reaches is a
question of seeds, not of the backend (``paper/paper.pdf``, its backend comparison).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from balanced_pi0 import determinism

determinism.apply()  # the pins every bpi0 stage runs under, before numpy/torch/jax load

import numpy as np  # noqa: E402

from balanced_pi0 import config as _config  # noqa: E402
from balanced_pi0.backends import make_backend  # noqa: E402
from balanced_pi0.curriculum import CurriculumBatches, build_curriculum, load_episode_sets  # noqa: E402
from balanced_pi0.data.lowdim import load_lowdim  # noqa: E402
from balanced_pi0.flow import sample_noise_time  # noqa: E402
from balanced_pi0.policy_io import PolicyIO  # noqa: E402
from balanced_pi0.train import loader_factory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="data/dataset")
    ap.add_argument("--split", default="data/split.json")
    ap.add_argument("--norm-stats", default="data/norm_stats")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="print every n-th step (and the first five)")
    args = ap.parse_args()

    params = {}
    for backend in ("jax", "torch"):
        base = _config.load(args.params, overrides={"train.backend": backend})
        params[backend] = _config.for_run(base, base.report.reference, base.train.seed)
    p = params["jax"]
    tc, dim = p.train, p.layout.build().real_action_dim
    low = load_lowdim(Path(args.dataset), action_dim=dim)
    sets = load_episode_sets(args.split, None, low.episodes)
    if tc.curriculum[0].episodes == "arm_heavy":
        raise SystemExit(
            "the reference's first curriculum phase reads arm-heavy episodes; use one that starts on train"
        )
    phases = build_curriculum(tc.curriculum[:1], sets)
    policy_io = PolicyIO.from_params(p, args.norm_stats)

    batches = CurriculumBatches(phases, loader_factory(p, args.dataset), tc.seed)
    batches.prepare()
    jax_b = make_backend(params["jax"])
    jax_b.init()
    torch_b = make_backend(params["torch"])
    determinism.apply()  # torch's switches, now that it is imported
    torch_b.init(jax_b.api.export(jax_b.model()))

    print(f"{'step':>5} {'loss jax':>10} {'loss torch':>10} {'grad jax':>10} {'grad torch':>10}")
    for step in range(args.steps):
        _, raw = batches.batch(step)
        batch = dict(policy_io.model_batch(raw))
        batch["noise"], batch["time"] = sample_noise_time(tc.seed, step, *batch["actions"].shape)
        a, b = jax_b.train_step(batch, step), torch_b.train_step(batch, step)
        if step < 5 or step % args.every == 0 or step == args.steps - 1:
            print(
                f"{step:>5} {a['loss']:>10.5f} {b['loss']:>10.5f} {a['grad_norm']:>10.4f} {b['grad_norm']:>10.4f}"
            )
    final_j, final_t = jax_b.api.export(jax_b.model()), torch_b.api.export(torch_b.inference_model())
    errors = sorted(
        (float(np.linalg.norm(final_j[k] - final_t[k]) / max(np.linalg.norm(final_j[k]), 1e-12)), k)
        for k in final_j
    )
    print(f"final (EMA) params after {args.steps} steps, largest relative differences:")
    for err, key in errors[-5:]:
        print(f"  {err:.2e}  {key}")


if __name__ == "__main__":
    main()
