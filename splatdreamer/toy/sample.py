"""Draw images from a toy prior on its own (no 3D): the check that the prior knows the toy world."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from splatdreamer.cameras import DEFAULT_RANGES, sample
from splatdreamer.toy import measure
from splatdreamer.toy.data import render_as_data
from splatdreamer.toy.model import ToyPriorParts, encode_prompts
from splatdreamer.toy.objects import PROMPTS, true_colors, variants
from splatdreamer.vsd import guidance_at

# A sample passes when its silhouette overlaps some ground-truth view by this much and its colour is this
# close (RGB distance in [0, 1]^3; the palette's closest pair, blue and purple, is 0.43 apart).
MIN_IOU = 0.6
MAX_COLOR_ERROR = 0.2


@torch.no_grad()
def sample_images(
    parts: ToyPriorParts,
    prompts: list[str],
    num_steps: int = 50,
    guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
    guidance_max_t: int | None = None,
) -> Tensor:
    """[B] prompts -> [B, 3, H, W] images in [0, 1], by ancestral DDPM sampling (Ho et al. 2020, Alg. 2) on
    `num_steps` evenly spaced timesteps, with classifier-free guidance
    eps = eps(x, "") + w (eps(x, y) - eps(x, "")) (Ho & Salimans 2022, Eq. 6), applied only at
    t <= guidance_max_t when that is set (w = 1 above it: guidance in a limited interval, Kynkäänniemi et al. 2024).

    Ancestral rather than deterministic DDIM: with a prior this small, DDIM's samples came out hazy
    (background ~0.74 instead of 1, red ball (0.71, 0.30, 0.30) instead of (0.85, 0.12, 0.10)), while the
    fresh noise of each DDPM step corrects the drift (background ~0.87, red (0.81, 0.15, 0.17)); measured
    on a 1000-step checkpoint, 4 samples, both at 25-50 steps.
    """
    unet = parts.unet
    size = unet.config.sample_size
    context = torch.cat([encode_prompts(parts, prompts), encode_prompts(parts, [""] * len(prompts))])

    def guided_eps(x: Tensor, t: Tensor) -> Tensor:
        eps_cond, eps_uncond = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
        return eps_uncond + guidance_at(t, guidance_scale, guidance_max_t) * (eps_cond - eps_uncond)

    shape = (len(prompts), unet.config.in_channels, size, size)
    return ancestral_sample(guided_eps, parts.scheduler, shape, num_steps, generator)


@torch.no_grad()
def ancestral_sample(
    eps: Callable[[Tensor, Tensor], Tensor],
    scheduler: DDPMScheduler,
    shape: tuple[int, ...],
    num_steps: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[B, C, H, W] images in [0, 1] from DDPM's ancestral sampler (Ho et al. 2020, Alg. 2) on `num_steps` evenly
    spaced timesteps of `scheduler`, starting from N(0, I) of `shape`; eps(x_t, t) is the (guided) noise estimate."""
    scheduler = DDPMScheduler.from_config(scheduler.config)  # a fresh copy: set_timesteps mutates it
    scheduler.set_timesteps(num_steps)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, t), t, x, generator=generator).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


@dataclass
class PromptCheck:
    """How samples of one prompt compare with the ground truth."""

    prompt: str
    images: Tensor  # [S, 3, H, W] the samples, in [0, 1]
    background: Tensor  # [S, 3] the colour of each sample's frame (white in the training data)
    iou: Tensor  # [S] silhouette IoU with the best-matching ground-truth render
    color_error: Tensor  # [S] colour distance to the truth inside the rim: of the mean colour for one-colour
    # objects, per foreground pixel for multi-coloured ones (their mean colour mixes the faces)
    nearest: Tensor  # [S] index into true_colors(prompt) of the sample's mean foreground colour
    size: Tensor  # [S] foreground area over the ground-truth renders' mean area (`measure.size_ratio`)

    def recognised(self, min_iou: float = MIN_IOU, max_color_error: float = MAX_COLOR_ERROR) -> Tensor:
        """[S] bool: the sample is recognisably the object, its silhouette and its colours both match."""
        return (self.iou > min_iou) & (self.color_error < max_color_error)


def check_prior(
    parts: ToyPriorParts,
    per_prompt: int = 4,
    num_steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    reference_views: int = 48,
    prompts: tuple[str, ...] = PROMPTS,
    guidance_max_t: int | None = None,
    supersample: int = 1,
) -> list[PromptCheck]:
    """Sample every toy prompt (or `prompts`) and measure the samples against renders of its objects.

    A sample's camera is unknown, so its silhouette is compared with `reference_views` ground-truth renders
    from generation's camera distribution and the best IoU is kept. Foreground is what differs from the
    sample's own frame colour, so a slightly tinted background is reported (`background`), not mistaken
    for object.
    """
    size = parts.unet.config.sample_size
    images = sample_images(
        parts, [p for p in prompts for _ in range(per_prompt)], num_steps, guidance_scale,
        torch.Generator().manual_seed(seed), guidance_max_t,
    )  # fmt: skip
    big = size * supersample
    cameras = sample(reference_views, DEFAULT_RANGES, big, big, torch.Generator().manual_seed(seed + 1))
    checks = []
    for k, prompt in enumerate(prompts):
        imgs = images[k * per_prompt : (k + 1) * per_prompt]
        background = measure.border_color(imgs)
        mask = measure.foreground(imgs, background)
        references = torch.cat([
            measure.foreground(render_as_data(v, cameras, supersample)) for v in variants(prompt)
        ])  # fmt: skip
        palette = true_colors(prompt)
        core = measure.interior(mask)  # colours are judged off the rim, where anti-aliasing blends in background
        mean_error, nearest = measure.nearest_color(measure.mean_foreground_color(imgs, core), palette)
        multicolored = any(len(v.colors) > 1 for v in variants(prompt))
        pixel_error = measure.pixel_color_error(imgs, core, palette)
        checks.append(
            PromptCheck(
                prompt=prompt,
                images=imgs,
                background=background,
                iou=measure.best_iou(mask, references),
                size=measure.size_ratio(mask, references),
                color_error=(pixel_error if multicolored else mean_error).nan_to_num(1.0),  # NaN: no foreground
                nearest=nearest,
            )
        )
    return checks
