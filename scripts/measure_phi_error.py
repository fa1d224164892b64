"""Where does the LoRA phi err, and how much against the gradient it is part of? (the toy preset's VSD loop)

With a perfect phi, VSD on a trained toy prior scores as SDS does (docs/benchmarks.md, "A perfect prior and a
perfect phi in 3D"), so what separates them is phi's fitting error. This script runs the toy preset's VSD
generation on a prior and, at chosen steps, compares on the step's own renders (each particle from its
camera, fresh noise, 8 draws) at fixed timesteps:

- phi's error: || eps_phi(LoRA) - eps_phi(exact) ||^2, the exact phi being the score of all the particles seen
  from each sample's camera (`toy.exact.camera_phi`), what a perfectly fitted phi would give;
- the signal: || eps_pretrained(CFG) - eps_phi(exact) ||^2, the direction VSD would move the particle with a
  perfect phi;
- their ratio: near 0, phi's error is a small part of the gradient; near 1, as large as what it corrects.
- noise: || noise - eps_phi(exact) ||^2, which is 0 where the particles' noised renders do not overlap (then
  VSD with the exact phi is SDS).

    python scripts/measure_phi_error.py --prior DIR --prompt "a red ball" --seed 0 --at 30 100 200 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from splatdreamer import presets
from splatdreamer.generate import Generation
from splatdreamer.toy.exact import camera_phi, exact_phi_of_views

TIMESTEPS = (50, 200, 400, 600, 800, 900, 950)


@torch.no_grad()
def phi_errors(run: Generation, timesteps=TIMESTEPS, draws: int = 8, seed: int = 123) -> dict[int, dict[str, float]]:
    """For the last step's cameras of `run`: per t, mean squared phi error, signal and noise (see the module)."""
    g = torch.Generator().manual_seed(seed)
    condition = run.last_cameras.condition()
    b, k = len(condition), len(run.particles)
    views = camera_phi(run)(condition)  # [B, K, 3, H, W], particle-major as the step's batch
    x0 = run.prior.encode_images(torch.stack([views[i, i // (b // k)] for i in range(b)]))
    text, negative = run.text.plain(b), run.text.negative(b)
    cfg = run.config.vsd.guidance()
    out = {}
    for tv in timesteps:
        t = torch.full((b,), tv)
        sums = {"phi": 0.0, "signal": 0.0, "noise": 0.0}
        for _ in range(draws):
            noise = torch.randn(x0.shape, generator=g)
            x_t = run.prior.add_noise(x0, noise, t)
            exact = exact_phi_of_views(views, run.prior.encode_images, x_t, t, run.prior.alphas_cumprod)
            sums["phi"] += (run.prior.eps_phi(x_t, t, text, condition) - exact).pow(2).mean().item() / draws
            guided = run.prior.eps_pretrained(x_t, t, text, negative, cfg)
            sums["signal"] += (guided - exact).pow(2).mean().item() / draws
            sums["noise"] += (noise - exact).pow(2).mean().item() / draws
        out[tv] = sums
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="toy", help="the prior (toy, or a `toy train` directory)")
    ap.add_argument("--prompt", default="a red ball")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="3D steps (default: the toy preset's)")
    ap.add_argument("--at", type=int, nargs="+", default=[30, 100, 200, 300], help="steps after which to measure")
    ap.add_argument(
        "--phi-min-t", type=int, default=None,
        help="ask phi only at t > this (default: every t, as the runs in docs/benchmarks.md)",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = presets.toy()
    config.prompt, config.seed, config.prior.name = args.prompt, args.seed, args.prior
    config.vsd.phi_min_t = args.phi_min_t
    if args.steps is not None:
        config.steps = args.steps
    print("| step | " + " | ".join(f"t = {t}: phi / signal (ratio), noise" for t in TIMESTEPS) + " |")
    print("|---|" + "---|" * len(TIMESTEPS))
    with tempfile.TemporaryDirectory() as run_dir:
        run = Generation(config, Path(run_dir))
        for step in range(1, config.steps + 1):
            run.train_step()
            if step in args.at:
                e = phi_errors(run)
                cells = [
                    f"{e[t]['phi']:.4f} / {e[t]['signal']:.4f} ({e[t]['phi'] / e[t]['signal']:.2f}), "
                    f"{e[t]['noise']:.4f}"
                    for t in TIMESTEPS
                ]
                print(f"| {step} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
