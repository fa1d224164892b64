"""The paper's 2D experiment on the toy prior: particles are images optimised directly against the prior.

ProlificDreamer (Sec. 3, Fig. 2 and App. C) first checks VSD as a sampler with no renderer: n images are the
particles, moved by w(t) (eps_pretrained - eps_phi) while phi learns them. Run through the same
`DiffusionPrior` and `vsd.score_distillation` as generation, this separates "the distillation math samples
the prior" from "the 3D loop keeps the particles apart": if VSD covers the colours of "a ball" here but not
in 3D, the cause is in the 3D loop. Each result is set beside the prior's own ancestral samples at the same
CFG, which is the distribution a perfect sampler would reproduce.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from splatdreamer import vsd
from splatdreamer.prior import DiffusionPrior
from splatdreamer.toy import measure
from splatdreamer.toy.exact import exact_phi
from splatdreamer.toy.objects import PALETTE
from splatdreamer.toy.sample import MAX_COLOR_ERROR

COLOR_NAMES = tuple(PALETTE)  # red, yellow, green, blue, purple
EMPTY = "empty"  # no foreground at all
OTHER = "other"  # a foreground whose mean colour is no palette colour (e.g. SDS's red-blue average)


def classify_colors(images: Tensor) -> list[str]:
    """[B, 3, H, W] images in [0, 1] -> [B] the palette colour each image's object shows, "other" or "empty".

    The object is what differs from the image's own frame colour (`measure.foreground`); its colour is the
    mean over the object's interior, named when it lies within `MAX_COLOR_ERROR` of a palette colour.
    """
    background = measure.border_color(images)
    mask = measure.foreground(images, background)
    core = measure.interior(mask)
    core = torch.where(core.flatten(1).any(1)[:, None, None], core, mask)  # a tiny object has no interior
    mean = measure.mean_foreground_color(images, core)
    palette = torch.tensor([PALETTE[c] for c in COLOR_NAMES])
    distance, index = measure.nearest_color(mean, palette)
    labels = []
    for d, i in zip(distance.tolist(), index.tolist()):
        if math.isnan(d):
            labels.append(EMPTY)
        else:
            labels.append(COLOR_NAMES[i] if d < MAX_COLOR_ERROR else OTHER)
    return labels


@dataclass
class ImageRunConfig:
    """One 2D run: K image particles distilled from the prior."""

    mode: vsd.Mode = "vsd"
    cfg_scale: float = 7.5
    cfg_max_t: int | None = None  # guidance only at t <= this (VSDConfig.cfg_max_t)
    particles: int = 8
    steps: int = 400
    lr: float = 0.01  # Adam on pixels in [0, 1]; ~0.01 per step moves a pixel across the range in ~100 steps
    phi_lr: float = 1e-3  # the toy preset's phi rate
    phi_steps: int = 1  # phi updates per particle update
    phi: Literal["lora", "exact"] = "lora"
    """lora: phi is the prior's LoRA + camera model, trained alongside (the paper's VSD). exact: eps_phi is the exact
    score of the particles' own mixture at each step (`exact_phi`): the phi a LoRA would converge to if it
    could fit the particles perfectly, so a run shows what VSD's force between particles does with no fitting
    error."""
    phi_bandwidth: float = 0.0  # exact phi only: each particle a Gaussian of this sigma per pixel (`exact_phi`)
    init: Literal["grey", "colors"] = "grey"
    """grey: every particle mid grey plus pixel noise. colors: each particle its own random flat colour plus
    pixel noise, the 2D counterpart of the toy preset's random initial colours per 3D particle."""
    camera_dropout: float = 0.1
    t_min: int = 20  # the 3D loop's range and annealing (official t_range 0.02-0.98, then 0.5 from t5_iters)
    t_max: int = 980
    t_max_annealed: int = 500
    anneal_fraction: float = 0.5  # of the steps, as the toy preset under --vsd.t-schedule random (150 of 300)
    t_schedule: Literal["random", "decreasing"] = "random"  # VSDConfig.t_schedule
    t_jitter: int = 20  # VSDConfig.t_jitter
    seed: int = 0


def distill_images(prior: DiffusionPrior, prompt: str, config: ImageRunConfig) -> Tensor:
    """Optimise `config.particles` images with VSD or SDS against `prompt` -> [K, 3, H, W] in [0, 1].

    The particles start as `config.init` says, with independent pixel noise. There is no camera: phi gets the
    zero camera condition for every particle (its camera embedding of zero is a constant it learns like any
    bias). phi is trained in place: `phi_fit(prior, images, prompt)` afterwards says how well it learnt them.
    With `config.phi == "exact"` the LoRA is neither used nor trained: eps_phi is `exact_phi` of the current
    particles at every step.
    """
    if config.phi not in ("lora", "exact"):
        raise ValueError(f"unknown phi {config.phi!r}; use 'lora' or 'exact'")
    k, size = config.particles, prior.resolution
    gen_cpu = torch.Generator().manual_seed(config.seed)
    gen_dev = torch.Generator(device=prior.device).manual_seed(config.seed + 1)
    if config.init == "grey":
        start = torch.full((k, 3, 1, 1), 0.5)
    elif config.init == "colors":
        start = torch.rand(k, 3, 1, 1, generator=gen_cpu)
    else:
        raise ValueError(f"unknown init {config.init!r}; use 'grey' or 'colors'")
    images = (start + 0.1 * torch.randn(k, 3, size, size, generator=gen_cpu)).clamp(0, 1).to(prior.device)
    images.requires_grad_(True)
    opt = torch.optim.Adam([images], lr=config.lr)
    lora = config.mode == "vsd" and config.phi == "lora"
    phi_opt = torch.optim.AdamW(prior.phi_parameters(), lr=config.phi_lr) if lora else None
    schedule = vsd.TimestepSchedule(
        t_min=config.t_min,
        t_max=config.t_max,
        t_max_annealed=config.t_max_annealed,
        anneal_step=round(config.anneal_fraction * config.steps),
        kind=config.t_schedule,
        total_steps=config.steps,
        jitter=config.t_jitter,
    )
    text = prior.text_embeddings(prompt)
    camera = torch.zeros(k, prior.camera_dim, device=prior.device)
    for step in range(config.steps):
        latents = prior.encode_images(images, generator=gen_dev)
        t = schedule.sample_timesteps(k, step, gen_cpu).to(prior.device)
        out = vsd.score_distillation(
            prior, latents, t, text=text, view_labels=None, camera=camera, mode=config.mode,
            cfg_scale=config.cfg_scale, cfg_max_t=config.cfg_max_t, generator=gen_dev,
            phi=exact_phi(latents, prior.alphas_cumprod, config.phi_bandwidth) if config.phi == "exact" else None,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        (out.loss * k).backward()  # each particle moves by its own score gradient, as in the 3D loop
        opt.step()
        with torch.no_grad():
            images.clamp_(0, 1)
        if lora:
            for _ in range(config.phi_steps):
                loss = prior.phi_loss(
                    latents.detach(), text.plain(k), camera, generator=gen_dev, camera_dropout=config.camera_dropout
                )
                phi_opt.zero_grad(set_to_none=True)
                loss.backward()
                phi_opt.step()
    return images.detach().cpu()


FIT_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def phi_fit(
    prior: DiffusionPrior, images: Tensor, prompt: str, timesteps: tuple[int, ...] = FIT_TIMESTEPS, seed: int = 0
) -> dict[int, tuple[float, float]]:
    """How well phi models the particles, against the pretrained model: per timestep t, the mean squared
    error of each model's epsilon on `images` [K, 3, H, W] noised to t, (pretrained at CFG 1, phi at the zero
    camera), with the same noise for both.

    VSD moves particle x by eps_pretrained - eps_phi; the particles can only be pushed apart where phi knows
    them better than the pretrained model does (a ratio phi/pretrained below 1). Near 1 at every t, phi has
    learnt nothing about the particles that the prior did not already know, and VSD acts as SDS at CFG 1.
    """
    k = images.shape[0]
    x0 = prior.encode_images(images.to(prior.device), generator=torch.Generator(prior.device).manual_seed(seed))
    text = prior.text_embeddings(prompt).plain(k)
    camera = torch.zeros(k, prior.camera_dim, device=prior.device)
    gen = torch.Generator(prior.device).manual_seed(seed)
    fit = {}
    for t in timesteps:
        tt = torch.full((k,), t, device=prior.device)
        noise = torch.randn(x0.shape, generator=gen, device=prior.device)
        x_t = prior.add_noise(x0, noise, tt)
        pretrained = prior.eps_pretrained(x_t, tt, text, text, 1.0)
        phi = prior.eps_phi(x_t, tt, text, camera)
        fit[t] = ((pretrained - noise).pow(2).mean().item(), (phi - noise).pow(2).mean().item())
    return fit


def fit_row(source: str, fit: dict[int, tuple[float, float]]) -> str:
    """One markdown row: source, then phi's error over the pretrained model's at each timestep."""
    return f"| {source} | " + " | ".join(f"{phi / pre:.2f}" for pre, phi in fit.values()) + " |"


def fit_header(timesteps: tuple[int, ...] = FIT_TIMESTEPS) -> str:
    cells = " | ".join(f"t = {t}" for t in timesteps)
    return f"| run | {cells} |\n|---|{'---|' * len(timesteps)}"


def count_row(source: str, cfg_scale: float, counts: Counter, total: int) -> str:
    """One markdown row: source, CFG, then the count of each palette colour, other and empty."""
    cells = " | ".join(str(counts.get(c, 0)) for c in (*COLOR_NAMES, OTHER, EMPTY))
    return f"| {source} | {cfg_scale:g} | {total} | {cells} |"


def count_header() -> str:
    names = " | ".join((*COLOR_NAMES, OTHER, EMPTY))
    return f"| source | CFG | n | {names} |\n|---|---|---|{'---|' * (len(COLOR_NAMES) + 2)}"
