"""What a perfect toy prior would draw: ancestral sampling with the exact denoiser of the training set.

A finite, weighted set of images {x_i, pi_i} noised as x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps is a Gaussian
mixture, so its minimum-error denoiser is known in closed form:

    E[x0 | x_t] = sum_i w_i x_i,  w = softmax_i( log pi_i - || x_t - sqrt(abar_t) x_i ||^2 / (2 (1 - abar_t)) ),
    eps(x_t) = (x_t - sqrt(abar_t) E[x0 | x_t]) / sqrt(1 - abar_t).

With one such denoiser for a prompt's images and one for the empty prompt's weighted draws, classifier-free
guidance can be run exactly. The samples are training images (the exact denoiser memorises), but which image a
sample lands on, and so the share of each colour of "a ball" at a given CFG, is what a trained prior converges
to. It separates what the data and the empty-prompt weighting imply from what the network adds, in seconds
instead of a training run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from splatdreamer.toy.sample import ancestral_sample

Denoiser = Callable[[Tensor, int], Tensor]


def posterior_mean(x: Tensor, abar: Tensor, flat: Tensor, log_pi: Tensor, sq: Tensor | None = None) -> Tensor:
    """[B, D] E[x0 | x_t] for [B, D] noisy x_t at [B] abar_t, under the mixture of the [N, D] images `flat` with
    [N] log weights, in the dtype given (`sq`: flat's [N] squared norms, when precomputed)."""
    sq = flat.pow(2).sum(1) if sq is None else sq
    d2 = x.pow(2).sum(1, keepdim=True) - 2 * abar.sqrt()[:, None] * (x @ flat.T) + abar[:, None] * sq[None]  # [B, N]
    w = torch.softmax(log_pi[None] - d2 / (2 * (1 - abar))[:, None], dim=1)
    return w @ flat


def eps_from_x0(x: Tensor, abar: Tensor, x0: Tensor) -> Tensor:
    """[B, D] epsilon of noisy x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, given [B, D] x_t, [B] abar_t and x0."""
    return (x - abar.sqrt()[:, None] * x0) / (1 - abar).sqrt()[:, None]


def exact_eps(images: Tensor, weights: Tensor, alphas_cumprod: Tensor) -> Denoiser:
    """The exact epsilon-predictor of the mixture of [N, C, H, W] images in [-1, 1] with [N] weights."""
    flat = images.flatten(1).double()
    sq = flat.pow(2).sum(1)
    log_pi = weights.double().log()

    def eps(x: Tensor, t: int) -> Tensor:
        abar = alphas_cumprod[int(t)].double()
        xf = x.flatten(1).double()
        abar = abar.expand(len(xf))
        return eps_from_x0(xf, abar, posterior_mean(xf, abar, flat, log_pi, sq)).view_as(x).to(x.dtype)

    return eps


def guided_samples(
    cond: Denoiser,
    uncond: Denoiser,
    scheduler: DDPMScheduler,
    shape: tuple[int, ...],
    guidance_scale: float,
    num_steps: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[B, C, H, W] samples in [0, 1] with eps = uncond + w (cond - uncond), by the ancestral sampler that
    `toy.sample.sample_images` runs on the trained prior."""

    def guided_eps(x: Tensor, t: Tensor) -> Tensor:
        e_u = uncond(x, int(t))
        return e_u + guidance_scale * (cond(x, int(t)) - e_u)

    return ancestral_sample(guided_eps, scheduler, shape, num_steps, generator)
