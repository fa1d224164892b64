"""Does VSD sample where its modes have spread of their own? The 2D sampler against an exact prior.

On the toy world VSD samples neither in 2D nor in 3D, and even the exact phi (the score of the particles' own
mixture) leaves it at SDS's colours (docs/benchmarks.md, "VSD with a perfect phi"). The reason given there:
the four colours of "a ball" are points, far apart in pixel space, so particles on one colour coincide and
VSD's force between them vanishes. ProlificDreamer's mechanism needs modes with spread of their own.

This script tests that reading with no network at all. The prior is the exact denoiser (`toy.exact.ExactPrior`)
of one of two worlds, both of balls seen from one camera:

- `four`: the four ball colours of the toy world, equally likely (the world the toy prior learnt);
- `hues`: balls whose hue is uniform on an arc of the colour wheel, 0 to 240 degrees (red through yellow and
  green to blue) at saturation 0.85 and value 0.85: one mode with continuous spread.

The unconditional set is both worlds and a blank image, a third each. K image particles run SDS or VSD with
the exact phi (`image_sampler.distill_images`), from grey or from random colours, at CFG 1 and 7.5, over
seeds; the prior's own ancestral samples at the same CFG (exact, so they are training images) are the target.
It prints each particle's hue (hues world) or colour (four world), and the spread.

    python scripts/measure_exact_sampler.py [--seeds 0 1 2] [--particles 8] [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import tempfile
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from splatdreamer import presets
from splatdreamer.cameras import DEFAULT_RANGES, orbit, sample
from splatdreamer.generate import Generation, resolve_prior_name
from splatdreamer.render import render
from splatdreamer.toy import measure
from splatdreamer.toy.data import render_views
from splatdreamer.toy.evaluate import score_particle
from splatdreamer.prior import DiffusionPrior
from splatdreamer.toy.exact import ExactPrior, WithExactPhi, camera_phi, exact_eps, guided_samples
from splatdreamer.toy.image_sampler import ImageRunConfig, classify_colors, distill_images
from splatdreamer.toy.objects import BALL_COLORS, PALETTE, ball_surface, gaussians, variants

HUE_RANGE = (0.0, 240.0)
SATURATION = VALUE = 0.85
ARC = torch.tensor([colorsys.hsv_to_rgb(h / 360, SATURATION, VALUE) for h in np.arange(0, 360.5, 0.5)]).float()


FRONT = orbit(torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([1.8]), torch.tensor([45.0]), 32, 32)
"""The 2D worlds' one camera, and the 3D runs' scoring view: the middle of generation's camera ranges."""


def ball_coverage(cameras) -> torch.Tensor:
    """[V, 1, H, W] the opacity of the toy ball seen from each camera."""
    means, normals = ball_surface()
    black = gaussians(means, normals, torch.zeros(len(means), 3))
    with torch.no_grad():
        img = render(black, cameras, background=torch.ones(len(cameras), 3)).rgb.clamp(0, 1)  # 1 - alpha on white
    return 1 - img[:, :1]


def balls(colors: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """[N, 3] colours, [V, 1, H, W] opacities -> [N * V, 3, H, W] balls of those colours on white, colour-major
    (a render is linear in the Gaussians' one colour: c alpha + white (1 - alpha))."""
    return (colors[:, None, :, None, None] * alpha[None] + (1 - alpha[None])).flatten(0, 1)


def world_colors(world: str) -> torch.Tensor:
    """[N, 3] the ball colours of a world: the four of the toy world, or 97 hues 2.5 degrees apart on the arc
    (neighbours 0.02-0.04 apart in RGB, far closer than the noise at any t > 20)."""
    if world == "four":
        return torch.tensor([PALETTE[c] for c in BALL_COLORS])
    lo, hi = HUE_RANGE
    return torch.tensor([colorsys.hsv_to_rgb(h / 360, SATURATION, VALUE) for h in np.linspace(lo, hi, 97)]).float()


def exact_prior(world: str, alpha: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[ExactPrior, dict]:
    """The exact prior whose prompt `world` is that world's balls seen with opacities `alpha`, equally likely;
    unconditional: both worlds' balls and a blank image, a third each. Also returns the sets."""
    sets = {w: balls(world_colors(w), alpha) for w in ("hues", "four")}
    blank = torch.ones(1, 3, *alpha.shape[-2:])
    uncond = torch.cat([sets["hues"], sets["four"], blank])
    uncond_w = torch.cat([torch.full((len(sets["hues"]),), 1 / len(sets["hues"])),
                          torch.full((len(sets["four"]),), 1 / len(sets["four"])), torch.ones(1)])  # fmt: skip
    weights = {"": (uncond, uncond_w), world: (sets[world], torch.ones(len(sets[world])))}
    return ExactPrior(weights, alphas_cumprod), weights


def hue_of(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each image's object colour -> (its hue on the colour wheel in degrees, RGB distance to that arc point);
    NaN for an image with no object."""
    mask = measure.interior(measure.foreground(images, measure.border_color(images)))
    mean = measure.mean_foreground_color(images, mask)
    d, i = measure.nearest_color(mean, ARC)
    hues = [float("nan") if math.isnan(x) else 0.5 * j for x, j in zip(d.tolist(), i.tolist())]
    return hues, d.tolist()


def spread(hues: list[float]) -> dict:
    """Hue statistics of one set of particles: sorted hues, standard deviation, 60-degree bins hit of 4."""
    h = [x for x in hues if not math.isnan(x)]
    lo, hi = HUE_RANGE
    bins = {min(int((x - lo) // 60), 3) for x in h if lo - 15 <= x <= hi + 15}
    return {"hues": sorted(round(x) for x in h), "std": float(np.std(h)) if h else float("nan"), "bins": len(bins)}


def run_3d(args: argparse.Namespace, alphas_cumprod: torch.Tensor) -> list[dict]:
    """The toy preset's generation against the exact prior of each world's balls from `args.views` cameras of
    generation's range: SDS, and VSD with an exact phi: `memory`, the exact score of the last step's renders
    over all cameras, or `camera`, the exact score of all particles rendered from each sample's camera."""
    alpha = ball_coverage(sample(args.views, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(2)))
    results = []
    for world in args.worlds:
        for cfg in args.cfgs:
            for init in args.inits:
                for mode in args.modes:
                    for seed in args.seeds:
                        config = presets.toy()
                        config.prompt, config.seed, config.steps = world, seed, args.steps
                        config.vsd = dataclasses.replace(
                            config.vsd, mode=mode, cfg_scale=cfg, anneal_step=args.steps // 2,
                            t_schedule=args.t_schedule, phi_min_t=args.phi_min_t,
                        )  # fmt: skip
                        config.splats = dataclasses.replace(
                            config.splats, init_color="random" if init == "colors" else "grey",
                            lr_sh0=args.lr_sh0 or config.splats.lr_sh0,
                        )
                        start = time.perf_counter()
                        if args.prior == "trained":
                            config.prompt = "a ball"
                            prior = WithExactPhi(DiffusionPrior.from_pretrained(resolve_prior_name(args.prior_dir)))
                        else:
                            prior = exact_prior(world, alpha, alphas_cumprod)[0]
                        with tempfile.TemporaryDirectory() as run_dir:
                            run = Generation(config, Path(run_dir), prior=prior)
                            if args.phi == "camera":
                                prior.phi_renders = camera_phi(run)
                            for _ in range(config.steps):
                                run.train_step()
                        row = {"space": "3d", "world": world, "cfg": cfg, "method": mode, "init": init, "seed": seed}
                        row |= {"prior": args.prior, "t_schedule": args.t_schedule, "phi": args.phi if mode == "vsd" else "-"}
                        row |= {"steps": args.steps, "lr_sh0": config.splats.lr_sh0}
                        if world == "four":
                            scores = [score_particle(p, "a ball", 64) for p in run.particles]
                            names = [variants("a ball")[s.variant].name if s.pure else "impure" for s in scores]
                            row |= {"balls": names, "covered": len({n for n in names if n != "impure"})}
                        else:
                            with torch.no_grad():
                                front = torch.cat([render(p, FRONT, torch.ones(1, 3)).rgb.clamp(0, 1) for p in run.particles])
                            hues, off = hue_of(front)
                            row |= spread(hues) | {"off_arc": float(np.nanmean(off))}
                        row["seconds"] = round(time.perf_counter() - start, 1)
                        results.append(row)
                        print(json.dumps(row), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--worlds", nargs="+", default=["hues", "four"])
    ap.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 7.5])
    ap.add_argument("--bandwidths", type=float, nargs="+", default=[0.0], help="exact phi's sigma per pixel (`exact_phi`)")
    ap.add_argument("--anneal-fraction", type=float, default=0.5, help="share of the steps before t_max drops to 500")
    ap.add_argument("--t-schedule", choices=("random", "decreasing"), default="random", help="VSDConfig.t_schedule")
    ap.add_argument("--lr", type=float, default=0.01, help="Adam's rate on the pixels")
    ap.add_argument("--inits", nargs="+", default=["grey", "colors"])
    ap.add_argument("--space", choices=("image", "3d"), default="image", help="3d: the toy preset's loop on 'a ball'")
    ap.add_argument("--lr-sh0", type=float, default=None, help="3d: the colours' learning rate (default: the preset's)")
    ap.add_argument("--modes", nargs="+", choices=("sds", "vsd"), default=["sds", "vsd"], help="3d: the methods to run")
    ap.add_argument("--prior", choices=("exact", "trained"), default="exact",
                    help="3d: the exact prior of the world, or the shipped toy prior on 'a ball' (scored as the four world) "
                    "with the camera-aware exact phi (--phi camera)")
    ap.add_argument("--prior-dir", default="toy", help="3d, --prior trained: the trained prior (toy, or a directory)")
    ap.add_argument("--phi", choices=("memory", "camera"), default="memory",
                    help="3d: VSD's exact phi, of the last step's renders (memory) or of all particles from each camera")
    ap.add_argument("--views", type=int, default=32, help="3d: cameras per ball in the exact prior's image set")
    ap.add_argument(
        "--phi-min-t", type=int, default=None,
        help="3D: ask phi only at t > this (default: every t, as the runs in docs/benchmarks.md)",
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and the particles' images")
    args = ap.parse_args()
    if args.prior == "trained" and (args.space != "3d" or args.phi != "camera" or args.worlds != ["four"]):
        ap.error("--prior trained runs with --space 3d --phi camera --worlds four ('a ball' is scored as the four world)")
    torch.manual_seed(0)
    scheduler = DDPMScheduler.from_pretrained(resolve_prior_name("toy"), subfolder="scheduler")
    if args.space == "3d":
        results = run_3d(args, scheduler.alphas_cumprod)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
        return
    alpha = ball_coverage(FRONT)
    results = []
    for world in args.worlds:
        prior, sets = exact_prior(world, alpha, scheduler.alphas_cumprod)
        for cfg in args.cfgs:
            cond = exact_eps(sets[world][0] * 2 - 1, sets[world][1], scheduler.alphas_cumprod)
            unc = exact_eps(sets[""][0] * 2 - 1, sets[""][1], scheduler.alphas_cumprod)
            anc = guided_samples(cond, unc, scheduler, (64, 3, 32, 32), cfg, generator=torch.Generator().manual_seed(0))
            row = {"world": world, "cfg": cfg, "method": "prior", "init": "-", "seed": "-"}
            row |= spread(hue_of(anc)[0]) if world == "hues" else {}
            row["colors"] = dict(Counter(classify_colors(anc)))
            results.append(row)
            print(json.dumps(row), flush=True)
            methods = [("sds", 0.0)] + [("vsd", b) for b in args.bandwidths]
            for init in args.inits:
                for mode, bandwidth in methods:
                    for seed in args.seeds:
                        config = ImageRunConfig(
                            mode=mode, phi="exact", phi_bandwidth=bandwidth, cfg_scale=cfg, particles=args.particles,
                            steps=args.steps, init=init, seed=seed, anneal_fraction=args.anneal_fraction, lr=args.lr,
                            t_schedule=args.t_schedule,
                        )  # fmt: skip
                        start = time.perf_counter()
                        images = distill_images(prior, world, config)
                        hues, off = hue_of(images)
                        row = {"world": world, "cfg": cfg, "method": mode, "bandwidth": bandwidth, "init": init}
                        row["seed"] = seed
                        row |= spread(hues) | {"off_arc": float(np.nanmean(off))} if world == "hues" else {}
                        row["colors"] = dict(Counter(classify_colors(images)))
                        row["seconds"] = round(time.perf_counter() - start, 1)
                        results.append(row)
                        print(json.dumps(row), flush=True)
                        if args.out:
                            args.out.mkdir(parents=True, exist_ok=True)
                            name = f"{world}_cfg{cfg:g}_{mode}{bandwidth:g}_{init}_s{seed}.pt"
                            torch.save(images, args.out / name)
    if args.out:
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
