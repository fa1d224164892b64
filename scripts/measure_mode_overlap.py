"""Up to which timestep can the colour of "a ball" still be read from a noised image?

VSD moves a particle along eps_pretrained - eps_phi, which pushes particles between the modes of the prior only
where the noised modes overlap: where x_t of a red ball could also have come from a green one. This script
measures that overlap for the toy world's four balls under the toy prior's noise schedule, with the exact
posterior of a four-image mixture: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and

    P(colour c | x_t) = softmax_c( -|| x_t - sqrt(abar_t) x0_c ||^2 / (2 (1 - abar_t)) ).

It prints, per t, the mean posterior on the colour the noise was added to (1: the modes are apart; 0.25: they
are indistinguishable), over `--views` cameras of generation's camera distribution and `--noises` noise draws.

    python scripts/measure_mode_overlap.py [--views 8] [--noises 100]
"""

from __future__ import annotations

import argparse

import torch
from diffusers import DDPMScheduler

from splatdreamer.cameras import DEFAULT_RANGES, sample
from splatdreamer.generate import resolve_prior_name
from splatdreamer.toy.data import render_views
from splatdreamer.toy.objects import variants

TIMESTEPS = (100, 300, 500, 700, 800, 850, 900, 925, 950, 965, 980, 990)


def posterior_on_truth(x0: torch.Tensor, abar: float, noises: int, g: torch.Generator) -> torch.Tensor:
    """[K] mean P(true colour | x_t) for each of the K images x0 [K, 3, H, W] in [-1, 1]."""
    out = []
    for c in range(len(x0)):
        eps = torch.randn(noises, *x0.shape[1:], generator=g)
        x_t = abar**0.5 * x0[c] + (1 - abar) ** 0.5 * eps
        d2 = (x_t[:, None] - abar**0.5 * x0[None]).pow(2).flatten(2).sum(-1)  # [noises, K]
        out.append(torch.softmax(-d2 / (2 * (1 - abar)), dim=1)[:, c].mean())
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--noises", type=int, default=100)
    ap.add_argument("--prior", default="toy", help="prior directory whose scheduler sets abar_t (default: the toy prior)")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    scheduler = DDPMScheduler.from_pretrained(resolve_prior_name(args.prior), subfolder="scheduler")
    size = 32
    cameras = sample(args.views, DEFAULT_RANGES, size, size, torch.Generator().manual_seed(1))
    balls = variants("a ball")
    names = [b.name for b in balls]
    # [views, 4, 3, H, W] in [-1, 1]: each view of the four balls, rendered once for every t.
    x0 = torch.stack([torch.cat([render_views(b, cameras[v : v + 1]) for b in balls]) for v in range(args.views)])
    x0 = x0 * 2 - 1
    print(f"| t | abar_t | {' | '.join(names)} | mean |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for t in TIMESTEPS:
        abar = float(scheduler.alphas_cumprod[t])
        p = torch.stack([posterior_on_truth(view, abar, args.noises, g) for view in x0]).mean(0)
        print(f"| {t} | {abar:.4f} | " + " | ".join(f"{x:.3f}" for x in p.tolist()) + f" | {p.mean():.3f} |")


if __name__ == "__main__":
    main()
