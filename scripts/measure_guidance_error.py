"""How far a trained toy prior's guidance direction at high noise is from the exact one, for "a ball".

Classifier-free guidance moves x0's estimate by w * (x0(x_t, y) - x0(x_t, "")). At the noisiest steps, where the
colour of "a ball" is decided, the true difference is small (the four balls' mean colour against every object's),
so an error of the network of the same size decides the colour once w multiplies it. This script noises 64 of the
prompt's training images to each t, and prints the mean colour over the ball's pixels of x0 predicted by the
network (conditional, empty prompt, guided at `--cfg`) beside the exact denoiser of the training set
(`splatdreamer.toy.exact`) with the empty prompt's weighting the prior was trained with, e.g.

    python scripts/measure_guidance_error.py --prior toy
    python scripts/measure_guidance_error.py --prior .prior_train/prior7 \\
        --scale "blue cube=0.5,red ball=1.3,green ball=1.3,yellow ball=1.1"
"""

from __future__ import annotations

import argparse

import torch

from splatdreamer.generate import resolve_prior_name
from splatdreamer.toy.data import ToyDataConfig, load_or_render, parse_object_scale, unconditional_weights
from splatdreamer.toy.exact import exact_eps
from splatdreamer.toy.model import encode_prompts, load
from splatdreamer.toy.objects import PROMPTS


def rgb(x0: torch.Tensor, mask: torch.Tensor) -> str:
    """Mean colour in [0, 1] over the masked pixels and the batch, as '(r, g, b)'."""
    mean = ((x0[:, :, mask].mean(2) + 1) / 2).mean(0)
    return "(" + ", ".join(f"{v:.2f}" for v in mean.tolist()) + ")"


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="toy", help="toy prior directory (default: the embedded one)")
    ap.add_argument("--scale", default="", help='empty-prompt object factors it was trained with, "name=f,name=f"')
    ap.add_argument("--prompt", default="a ball")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--t", type=int, nargs="+", default=[980, 950, 925, 900, 850])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--data-dir", default=".toydata", help="cache of the rendered dataset (as `toy train`)")
    args = ap.parse_args()

    parts = load(resolve_prior_name(args.prior))
    abar = parts.scheduler.alphas_cumprod
    data = load_or_render(ToyDataConfig(), args.data_dir)
    images = data.images.float() / 127.5 - 1.0
    mine = (data.prompt_index == PROMPTS.index(args.prompt)).nonzero()[:, 0]
    exact_cond = exact_eps(images[mine], torch.ones(len(mine)), abar)
    exact_uncond = exact_eps(images, unconditional_weights(data, parse_object_scale(args.scale)), abar)
    mask = (images[mine] < 0.9).any(1).float().mean(0) > 0.5  # pixels covered in most of the prompt's images
    g = torch.Generator().manual_seed(0)
    pick = mine[torch.randperm(len(mine), generator=g)[: args.samples]]
    n = len(pick)
    context = torch.cat([encode_prompts(parts, [args.prompt] * n), encode_prompts(parts, [""] * n)])

    w = args.cfg
    print(f"| t | network: cond | empty | CFG {w:g} | exact: cond | empty | CFG {w:g} |")
    print("|---|---|---|---|---|---|---|")
    for t in args.t:
        a = abar[t]
        clean = images[pick]
        x = a.sqrt() * clean + (1 - a).sqrt() * torch.randn(clean.shape, generator=g)
        net_c, net_u = parts.unet(torch.cat([x, x]), torch.tensor(t), encoder_hidden_states=context).sample.chunk(2)
        ex_c, ex_u = exact_cond(x, t), exact_uncond(x, t)
        eps = [net_c, net_u, net_u + w * (net_c - net_u), ex_c, ex_u, ex_u + w * (ex_c - ex_u)]
        cells = [(x - (1 - a).sqrt() * e) / a.sqrt() for e in eps]  # x0 from eps
        print(f"| {t} | " + " | ".join(rgb(c, mask) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
