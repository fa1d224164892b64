"""What the densification threshold sees: the screen-space gradients of a real run, at every refinement.

    python scripts/measure_densify.py                          # the toy preset, "a red ball"
    python scripts/measure_densify.py --prompt "a blue cube" --particles 4 --views-per-particle 1

gsplat's DefaultStrategy grows a Gaussian when the mean over the steps since the last refinement of
the norm of its screen-space gradient (in gsplat's normalised units: d loss / d pixel * image size / 2)
exceeds `grow_grad2d`. 3DGS's 0.0002 is tuned for a photometric loss; score distillation's gradient
has another scale, so this prints, for each refinement of each particle, the quantiles of that mean
over the Gaussians that were seen, and the share above the threshold in use.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from splatdreamer.generate import Generation
from splatdreamer.presets import PRESETS

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class MeasureConfig:
    preset: str = "toy"
    """Starting configuration (the toy preset runs on a CPU)."""
    prompt: str = "a red ball"
    particles: int | None = None
    """None = the preset's."""
    views_per_particle: int | None = None
    """None = the preset's."""
    grow_grad2d: float | None = None
    """Threshold to run with; None = the preset's."""
    steps: int | None = None
    """None = the preset's."""
    seed: int = 0


def main(argv: list[str] | None = None) -> list[dict]:
    args = tyro.cli(MeasureConfig, args=argv, description=__doc__.split("\n")[0])
    config = PRESETS[args.preset]()
    config.prompt, config.seed = args.prompt, args.seed
    config.particles = args.particles or config.particles
    config.steps = args.steps or config.steps
    if args.views_per_particle:
        config.vsd = dataclasses.replace(config.vsd, views_per_particle=args.views_per_particle)
    if args.grow_grad2d is not None:
        config.strategy = dataclasses.replace(config.strategy, grow_grad2d=args.grow_grad2d)
    threshold = config.strategy.grow_grad2d
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as run_dir:
        run = Generation(config, Path(run_dir))
        for k, opt in enumerate(run.optimizers):
            grow = opt.strategy._grow_gs

            def recording_grow(params, optimizers, state, step, k=k, grow=grow):
                seen = state["count"] > 0
                grads = state["grad2d"][seen] / state["count"][seen]
                q = torch.quantile(grads, torch.tensor(QUANTILES, device=grads.device)).tolist()
                n_dupli, n_split = grow(params, optimizers, state, step)
                records.append(dict(step=step, particle=k, gaussians=int(seen.numel()), seen=int(seen.sum()),
                                    quantiles=q, above=float((grads > threshold).float().mean()),
                                    duplicated=n_dupli, split=n_split))  # fmt: skip
                return n_dupli, n_split

            opt.strategy._grow_gs = recording_grow
        while run.step < config.steps:
            run.train_step()
    print(
        f"{args.preset} preset, {config.prompt!r}, {config.particles} particle(s) x {config.vsd.views_per_particle} "
        f"view(s), {config.splats.resolution or run.prior.resolution} px, grow_grad2d {threshold}\n"
    )
    print("| step | particle | Gaussians | seen | median | 90 % | 99 % | above threshold | duplicated | split |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        q = " | ".join(f"{v:.3g}" for v in r["quantiles"])
        print(
            f"| {r['step']} | {r['particle']} | {r['gaussians']} | {r['seen']} | {q} | {100 * r['above']:.1f} % | "
            f"{r['duplicated']} | {r['split']} |"
        )
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
