"""Where does the toy prior pull a ball's colour at high noise, against the exact denoiser of its training set?

SDS's and VSD's step moves a render x0 along eps(x_t) - noise = -sqrt(abar / (1 - abar)) (x0_hat - x0), so the
colour of the prior's denoised estimate x0_hat = (x_t - sqrt(1 - abar) eps(x_t)) / sqrt(abar) is where a
particle's colour is pulled. With falling t the particles choose their colour above t = 900
(docs/benchmarks.md, "In 3D the colours must move while t is high"); there, an exact prior would pull a
grey ball to each colour about as often as its samples hold that colour. This script renders toy balls
(grey, and each ball colour) from random generation cameras, noises each with fresh noise at chosen t, and
names the colour of x0_hat over the ball's own pixels (nearest palette colour) for the shipped prior and for
the exact denoiser of the same training data, at each CFG:

    python scripts/measure_high_t_pull.py [--t 980 950 900 800] [--cfg 1 7.5] [--draws 64] \
        [--prior DIR --scale "blue cube=0.5,red ball=1.3"]

`--prior` measures another prior (a directory `toy train` wrote); `--scale` gives the exact denoiser the
empty-prompt factors that prior was trained with (its `--uncond-object-scale`).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

# the sibling script's toy balls (scripts/ is on sys.path when a script runs)
from measure_exact_sampler import ball_coverage, balls

from splatdreamer.cameras import DEFAULT_RANGES, sample
from splatdreamer.generate import resolve_prior_name
from splatdreamer.prior import DiffusionPrior
from splatdreamer.toy.data import ToyDataConfig, load_or_render, parse_object_scale, unconditional_weights
from splatdreamer.toy.exact import exact_eps
from splatdreamer.toy.objects import BALL_COLORS, PALETTE, PROMPTS

GREY = (0.5, 0.5, 0.5)


def nearest(colors: torch.Tensor) -> list[str]:
    palette = torch.tensor([PALETTE[c] for c in BALL_COLORS])
    return [BALL_COLORS[i] for i in torch.cdist(colors, palette).argmin(1).tolist()]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t", type=int, nargs="+", default=[980, 950, 900, 800])
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 7.5])
    ap.add_argument("--draws", type=int, default=64, help="cameras and noise draws per start colour")
    ap.add_argument("--prompt", default="a ball")
    ap.add_argument("--prior", default="toy", help="the prior to measure: toy (the shipped one) or a directory")
    ap.add_argument("--scale", default="", help='its empty-prompt factors, "name=f,name=f" ("": every object equally)')
    ap.add_argument("--data-dir", default=".toydata", help="cache of the rendered dataset (as `toy train`)")
    args = ap.parse_args()

    prior = DiffusionPrior.from_pretrained(resolve_prior_name(args.prior))
    abar_all = prior.alphas_cumprod.cpu()
    data = load_or_render(ToyDataConfig(), args.data_dir)
    images = data.images.float() / 127.5 - 1.0
    mine = (data.prompt_index == PROMPTS.index(args.prompt)).nonzero()[:, 0]
    exact_c = exact_eps(images[mine], torch.ones(len(mine)), abar_all)
    exact_u = exact_eps(images, unconditional_weights(data, parse_object_scale(args.scale)), abar_all)
    text = prior.text_embeddings(args.prompt)

    cameras = sample(args.draws, DEFAULT_RANGES, prior.resolution, prior.resolution, torch.Generator().manual_seed(0))
    alpha = ball_coverage(cameras)  # [V, 1, H, W]
    mask = alpha[:, 0] > 0.5
    starts = {"grey": GREY, **{c: PALETTE[c] for c in BALL_COLORS}}
    print(f"| start | t | CFG | {args.prior}: x0_hat nearest colour (of {args.draws}) | exact denoiser |")
    print("|---|---|---|---|---|")
    for name, color in starts.items():
        x0 = balls(torch.tensor([color]), alpha) * 2 - 1  # the ball in this colour on white, in [-1, 1]
        for t in args.t:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
            abar = abar_all[t]
            x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            tt = torch.full((len(x0),), t)
            for cfg in args.cfg:
                eps_net = prior.eps_pretrained(x_t, tt, text.plain(len(x0)), text.negative(len(x0)), cfg)
                e_u, e_c = exact_u(x_t, tt), exact_c(x_t, tt)
                eps_ex = e_u + cfg * (e_c - e_u)
                row = []
                for eps in (eps_net, eps_ex):
                    x0_hat = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1) / 2 + 0.5
                    mean = (x0_hat * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None]
                    counts = Counter(nearest(mean))
                    row.append(", ".join(f"{c[0]} {counts[c]}" for c in BALL_COLORS))
                print(f"| {name} | {t} | {cfg:g} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
    main()
