"""The toy preset's 3D loop against a perfect prior: is a gap between VSD and SDS the trained prior's or the loop's?

`toy eval` scores VSD and SDS on the trained toy prior, so a result mixes what the loop does with what the
network gets wrong. This script runs the same generations (the toy preset, `toy eval`'s table and scoring)
with no network at all: eps_pretrained is the exact denoiser of the toy prior's own training images
(`toy.exact.ExactPrior`: each prompt's images, and every image under the empty prompt, weighted by
`--uncond-object-scale` as `toy train` weights them), and VSD's phi is the exact, camera-aware score of all the
particles seen from each sample's camera (`toy.exact.camera_phi`), what a perfectly fitted LoRA would give.

It also prints what the exact prior's own ancestral samples look like at each method's CFG: their size (mean
silhouette area over the truth's from generation's camera distribution, `measure.size_ratio`), because
classifier-free guidance at high noise favours close views of an object, and score distillation then draws
the object bigger to match.

    python scripts/measure_exact_world.py --prompts "a red ball" "a ball" --methods vsd-7.5 sds-7.5 \\
        --seeds 0 1 2 --uncond-object-scale "blue cube=0.5,red ball=1.3,green ball=1.3,yellow ball=0.93,blue ball=0.95"

`--views` gives the exact prior one set per view label as well ("a blue cube, side view": the prompt's images
whose camera has that label), so that the loop's view-dependent prompts are answered as by a prior trained on
the labelled images; without it every view asks for all of the prompt's images. `--picture PATH` writes
`toy eval`'s picture of the first seed's particles.

`--supersample 2` makes the exact prior's images as `toy train --data.supersample 2` makes a prior's (rendered
at twice the size, averaged 2 x 2) and renders the particles at twice the size, as `generate` does on such a
prior: the ceiling of a prior trained on supersampled images.

`--cfg-max-t T` guides only at t <= T, as `splatdreamer generate --vsd.cfg-max-t`. `--prior DIR` puts a trained
prior (a `toy train` directory, or `toy`) in the exact prior's place and keeps VSD's phi exact, so that with
`toy eval` on the same prior (the LoRA phi) the three runs split VSD's gap to SDS into the loop's, the prior's
and phi's shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from PIL import Image

from splatdreamer import cameras as cams
from splatdreamer import presets
from splatdreamer.generate import Generation, resolve_prior_name
from splatdreamer.prior import DiffusionPrior
from splatdreamer.prior.text import view_prompt
from splatdreamer.toy import measure
from splatdreamer.toy.data import (
    ToyDataConfig, caption_groups, load_or_render, parse_object_scale, render_as_data, unconditional_weights,
)  # fmt: skip
from splatdreamer.toy.evaluate import colors_table, parse_method, picture, scored_row, table
from splatdreamer.toy.exact import ExactPrior, WithExactPhi, camera_phi, exact_eps
from splatdreamer.toy.objects import EVAL_PROMPTS, PROMPTS, variants
from splatdreamer.toy.sample import ancestral_sample
from splatdreamer.vsd import guidance_at


def guided_size(prompt: str, images: torch.Tensor, mine: torch.Tensor, uncond_weights: torch.Tensor,
                scheduler: DDPMScheduler, cfg: float, cfg_max_t: int | None, samples: int,
                supersample: int = 1) -> float:  # fmt: skip
    """Mean size of the exact prior's guided ancestral samples of `prompt` (50 DDPM steps, seed 0), against the
    truth made as the images were (rendered `supersample` times bigger, then averaged down)."""
    abar = scheduler.alphas_cumprod
    cond = exact_eps(images[mine] * 2 - 1, torch.ones(len(mine)), abar)
    uncond = exact_eps(images * 2 - 1, uncond_weights, abar)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # CFG only at t <= cfg_max_t, as --vsd.cfg-max-t
        e_u = uncond(x_t, int(t))
        return e_u + guidance_at(t, cfg, cfg_max_t) * (cond(x_t, int(t)) - e_u)

    x = ancestral_sample(eps, scheduler, (samples, *images.shape[1:]), 50, torch.Generator().manual_seed(0))
    size = images.shape[-1]
    big = size * supersample
    references = cams.sample(48, cams.DEFAULT_RANGES, big, big, torch.Generator().manual_seed(1))
    truth = torch.cat([
        measure.foreground(render_as_data(v, references, supersample)) for v in variants(prompt)
    ])  # fmt: skip
    return measure.size_ratio(measure.foreground(x, measure.border_color(x)), truth).mean().item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", nargs="+", default=list(EVAL_PROMPTS), choices=PROMPTS, metavar="PROMPT",
                    help=f"toy prompts (default: {', '.join(EVAL_PROMPTS)}; any of: {', '.join(PROMPTS)})")
    ap.add_argument("--methods", nargs="+", default=["vsd-7.5", "sds-7.5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="3D steps (default: the toy preset's)")
    ap.add_argument("--cfg-max-t", type=int, default=None, help="guide only at t <= this (default: every t)")
    ap.add_argument(
        "--phi-min-t", type=int, default=None,
        help="ask phi only at t > this (default: every t, as the runs in docs/benchmarks.md)",
    )
    ap.add_argument("--uncond-object-scale", default="", help='factors on objects under "", "name=f,name=f"')
    ap.add_argument("--samples", type=int, default=64, help="ancestral samples for the size line (0: none)")
    ap.add_argument("--data-dir", default=".toydata", help="cache of the rendered dataset (as `toy train`)")
    ap.add_argument("--views-per-prompt", type=int, default=ToyDataConfig.views_per_prompt,
                    help="training images per prompt (default: the toy prior's)")
    ap.add_argument(
        "--supersample", type=int, default=1,
        help="the exact prior's images rendered this many times bigger and averaged down, and the loop's renders "
        "at that size (as a prior trained with `toy train --data.supersample`)",
    )
    ap.add_argument("--prior", default="exact", help="exact (default), or a trained prior (DIR or toy) with exact phi")
    ap.add_argument("--views", action="store_true", help="a set per view label for the view-dependent prompts")
    ap.add_argument("--picture", default=None, help="write the picture of the first seed's particles here (PNG)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.supersample < 1:
        ap.error(f"--supersample must be 1 or more, not {args.supersample}")
    if args.supersample > 1 and args.prior != "exact":
        ap.error("--supersample sets the exact prior's images; a trained prior renders at the factor its own "
                 "training.json records, so drop --supersample with --prior")  # fmt: skip
    data = load_or_render(
        ToyDataConfig(views_per_prompt=args.views_per_prompt, supersample=args.supersample), args.data_dir
    )
    images = data.images.float() / 255
    uncond_weights = unconditional_weights(data, parse_object_scale(args.uncond_object_scale))
    groups = caption_groups(data)
    scheduler = DDPMScheduler.from_pretrained(resolve_prior_name("toy"), subfolder="scheduler")
    rows = []
    for prompt in args.prompts:
        mine = groups[prompt]
        sets = {"": (images, uncond_weights), prompt: (images[mine], torch.ones(len(mine)))}
        if args.views:
            for label in cams.VIEW_LABELS:
                if (labelled := groups.get(view_prompt(prompt, label))) is not None:
                    sets[view_prompt(prompt, label)] = (images[labelled], torch.ones(len(labelled)))
        for method in args.methods:
            mode, cfg = parse_method(method)
            if args.samples and args.prior == "exact":
                size = guided_size(
                    prompt, images, mine, uncond_weights, scheduler, cfg, args.cfg_max_t, args.samples,
                    args.supersample,
                )
                print(f"exact prior's own samples of {prompt!r} at CFG {cfg:g}: size {size:.2f}", flush=True)
            for seed in args.seeds:
                config = presets.toy()
                config.prompt, config.seed = prompt, seed
                if args.steps is not None:
                    config.steps = args.steps
                    config.vsd = dataclasses.replace(config.vsd, anneal_step=args.steps // 2)
                config.vsd = dataclasses.replace(
                    config.vsd, mode=mode, cfg_scale=cfg, cfg_max_t=args.cfg_max_t, phi_min_t=args.phi_min_t
                )
                if args.supersample > 1:  # renders at the images' rendering size; the prior sees their mean
                    render_size = images.shape[-1] * args.supersample
                    config.splats = dataclasses.replace(config.splats, resolution=render_size)
                if args.prior == "exact":
                    prior = ExactPrior(sets, scheduler.alphas_cumprod)
                else:
                    prior = WithExactPhi(DiffusionPrior.from_pretrained(resolve_prior_name(args.prior)))
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as run_dir:
                    run = Generation(config, Path(run_dir), prior=prior)
                    if mode == "vsd":
                        prior.phi_renders = camera_phi(run)
                    for _ in range(config.steps):
                        run.train_step()
                rows.append(scored_row(prompt, method, seed, run.particles, time.perf_counter() - start, 64))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.picture:
        Image.fromarray(picture([r for r in rows if r.seed == args.seeds[0]], 64)).save(args.picture)
    if colors := colors_table(rows):
        print("\n" + colors)


if __name__ == "__main__":
    main()
