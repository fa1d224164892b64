"""Which colours would a perfect toy prior draw for "a ball", at each CFG, under a weighting of the empty prompt?

Classifier-free guidance samples p(x | y)^w / p(x)^(w - 1) (Ho & Salimans 2022), so a colour that is common under
the empty prompt's distribution p(x) is suppressed, by a power that grows with w. The colour of a ball is decided
at high noise, where the blue ball and the blue cube (the green ball and the green cone, ...) look alike, so
"every object equally often" under p(x) is not "every colour equally often" there. This script runs guided
ancestral sampling with the exact denoiser of the training set (`splatdreamer.toy.exact`) and counts the colours
of the samples, for the default empty-prompt weighting and for `--scale` factors on chosen objects, e.g.

    python scripts/measure_guided_balance.py --cfg 1 3 7.5 \\
        --scale "" "blue cube=0.5,red ball=1.3,green ball=1.3,yellow ball=1.1"

("" is the default weighting). The factors are what `splatdreamer toy train --uncond-object-scale` takes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from diffusers import DDPMScheduler

from splatdreamer.generate import resolve_prior_name
from splatdreamer.toy.data import ToyDataConfig, load_or_render, parse_object_scale, unconditional_weights
from splatdreamer.toy.exact import exact_eps, guided_samples
from splatdreamer.toy.image_sampler import COLOR_NAMES, EMPTY, OTHER, classify_colors
from splatdreamer.toy.objects import PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="a ball")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    ap.add_argument("--scale", nargs="+", default=[""], help='object factors, "name=f,name=f" ("" = default)')
    ap.add_argument("--samples", type=int, default=128, help="samples per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=50, help="sampling steps (the prior check's 50)")
    ap.add_argument("--data-dir", default=".toydata", help="cache of the rendered dataset (as `toy train`)")
    ap.add_argument("--prior", default="toy", help="prior whose scheduler sets abar_t (default: the toy prior)")
    args = ap.parse_args()

    data = load_or_render(ToyDataConfig(), args.data_dir)
    images = data.images.float() / 127.5 - 1.0
    scheduler = DDPMScheduler.from_pretrained(resolve_prior_name(args.prior), subfolder="scheduler")
    abar = scheduler.alphas_cumprod
    mine = (data.prompt_index == PROMPTS.index(args.prompt)).nonzero()[:, 0]
    cond = exact_eps(images[mine], torch.ones(len(mine)), abar)
    names = [*COLOR_NAMES, OTHER, EMPTY]
    print(f"| empty-prompt scale | CFG | {' | '.join(names)} |")
    print("|---|---|" + "---|" * len(names))
    for text in args.scale:
        uncond = exact_eps(images, unconditional_weights(data, parse_object_scale(text)), abar)
        for w in args.cfg:
            start = time.time()
            shape = (args.samples, *images.shape[1:])
            counts: Counter[str] = Counter()
            for seed in args.seeds:
                x = guided_samples(cond, uncond, scheduler, shape, w, args.steps, torch.Generator().manual_seed(seed))
                counts.update(classify_colors(x))
            total = sum(counts.values())
            cells = " | ".join(f"{counts[n] / total:.0%}" for n in names)
            print(f"| {text or 'default'} | {w:g} | {cells} |  ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
