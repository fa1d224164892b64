"""How well can the toy preset's 3D loop draw each toy object at all? The loop against the truth itself.

`toy eval` scores what VSD and SDS make of a prior; `measure_exact_world.py` puts the exact denoiser of the
prior's training images in its place, which still lets any view of the object from any camera explain a render.
Here eps_pretrained is the exact denoiser of one image: the true object rendered from the sample's own camera
(on the loop's white background, at the loop's render size, encoded as the loop encodes). SDS against it is
denoising score matching on a point, whose step is w(t) sqrt(abar / (1 - abar)) (x - x_true): a photometric
fit, with the loop's weighting, gradient clipping, learning rates, densification and 300 steps unchanged. What it
scores is the ceiling of the loop's Gaussians, steps and renders; what a prior scores below it is the prior's.

    python scripts/measure_loop_ceiling.py --prompts "a blue cube" "a green cone" --seeds 0 1 2 [--resolution 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor

from splatdreamer import presets
from splatdreamer.generate import Generation, resolve_prior_name
from splatdreamer.prior.diffusion import resize_renders
from splatdreamer.toy.data import render_views as render_truth
from splatdreamer.toy.evaluate import Row, scored_row, table
from splatdreamer.toy.exact import ExactPrior
from splatdreamer.toy.objects import EVAL_PROMPTS, variants


class TruthPrior(ExactPrior):
    """eps_pretrained is the exact epsilon of a point at the true render from each sample's camera.

    The loop's batch is particle-major in the order of `run.last_cameras` (`Generation.train_step`), so
    sample i was drawn from camera i; `run` is set once the run exists.
    """

    run: Generation | None = None

    def __init__(self, prompt: str, alphas_cumprod: Tensor, resolution: int) -> None:
        blank = torch.ones(1, 3, resolution, resolution)
        super().__init__({"": (blank, torch.ones(1)), prompt: (blank, torch.ones(1))}, alphas_cumprod)
        self.object = variants(prompt)[0]

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return resize_renders(images, self.resolution) * 2.0 - 1.0  # as DiffusionPrior.encode_images

    @torch.no_grad()
    def eps_pretrained(self, x_t: Tensor, t: Tensor, text_cond: Tensor, text_uncond: Tensor, cfg_scale) -> Tensor:
        cameras = self.run.last_cameras
        assert len(cameras) == len(x_t), "one camera per sample"
        truth = self.encode_images(render_truth(self.object, cameras.to(torch.device("cpu"))))
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * truth) / (1 - abar).sqrt()


def fit_truth(prompt: str, seed: int, resolution: int | None = None, steps: int | None = None) -> Row:
    """One toy-preset run of SDS against the truth; `toy eval`'s scored row (12 views at 64 px)."""
    toy = resolve_prior_name("toy")
    scheduler = DDPMScheduler.from_pretrained(toy, subfolder="scheduler")
    size = UNet2DConditionModel.load_config(toy, subfolder="unet")["sample_size"]  # the toy prior's resolution
    config = presets.toy()
    config.prompt, config.seed = prompt, seed
    config.steps = config.steps if steps is None else steps
    config.vsd = dataclasses.replace(config.vsd, mode="sds")
    config.splats = dataclasses.replace(config.splats, resolution=resolution)
    prior = TruthPrior(prompt, scheduler.alphas_cumprod, size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        run = Generation(config, Path(run_dir), prior=prior)
        prior.run = run
        for _ in range(config.steps):
            run.train_step()
    return scored_row(prompt, "truth", seed, run.particles, time.perf_counter() - start, 64)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", nargs="+", default=[p for p in EVAL_PROMPTS if p != "a ball"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--resolution", type=int, default=None, help="render size (default: the toy preset's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for prompt in args.prompts:
        for seed in args.seeds:
            rows.append(fit_truth(prompt, seed, args.resolution))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
