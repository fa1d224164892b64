"""Score distillation, as in ProlificDreamer (Wang et al. 2023), Algorithm 1.

For renders g(theta, c) encoded to latents x0, a timestep t and noise eps, x_t = alpha_t x0 + sigma_t eps:

    VSD (Eq. 9):  grad_x0 = w(t) (eps_pretrained(x_t, t, y) - eps_phi(x_t, t, y, c))
    SDS:          grad_x0 = w(t) (eps_pretrained(x_t, t, y) - eps)          (eps_phi replaced by the noise)

with w(t) = 1 - abar_t, and that gradient is pushed into theta through the encoder and the renderer by a
surrogate loss. phi, the LoRA, is trained separately on the same (detached) renders (`DiffusionPrior.phi_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from splatdreamer.prior import DiffusionPrior, TextEmbeddings


@dataclass
class TimestepSchedule:
    """t ~ U{t_min..t_max}, with t_max lowered to `t_max_annealed` from `anneal_step` on."""

    t_min: int = 20  # official nerf/sd.py: min_step = 0.02 * 1000
    t_max: int = 980  # official nerf/sd.py: max_step = 0.98 * 1000
    t_max_annealed: int = 500  # official nerf/utils.py: after t5_iters, max_step = 500
    anneal_step: int = 5000  # official main.py --t5_iters 5000 (of 25k NeRF steps)

    def bounds(self, step: int) -> tuple[int, int]:
        return self.t_min, (self.t_max if step < self.anneal_step else self.t_max_annealed)

    def sample(self, batch: int, step: int, generator: torch.Generator | None = None) -> Tensor:
        """[batch] int64 timesteps, one per sample (threestudio; the official code draws one per batch)."""
        lo, hi = self.bounds(step)
        return torch.randint(lo, hi + 1, (batch,), generator=generator)


def weight(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) = 1 - abar_t (official nerf/sd.py:147, threestudio l.540)."""
    return 1.0 - alphas_cumprod[t]


@dataclass
class Distillation:
    """One score-distillation evaluation."""

    loss: Tensor  # scalar surrogate; d loss / d latents = grad / B
    grad: Tensor  # [B, ...] w(t) (eps_pretrained - eps_phi or noise)
    t: Tensor  # [B]
    noise: Tensor  # [B, ...]
    grad_norm: float  # mean over the batch of the per-sample gradient norm


def surrogate_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """0.5 sum (x0 - sg(x0 - grad))^2 / B: its gradient w.r.t. x0 is grad / B (the batch mean, as the
    official SpecifyGradient and threestudio's loss_vsd)."""
    target = (latents - grad).detach()
    return 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]


def score_distillation(
    prior: DiffusionPrior,
    latents: Tensor,
    t: Tensor,
    text: TextEmbeddings,
    view_labels: list[str] | None,
    camera: Tensor,
    mode: Literal["vsd", "sds"] = "vsd",
    cfg_scale: float = 7.5,
    phi_cfg_scale: float = 1.0,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> Distillation:
    """The VSD (or SDS) gradient for `latents` [B, C, h, w] (with grad) and its surrogate loss.

    The pretrained score sees the view-dependent prompt of each camera (`view_labels`, or the plain prompt
    when None) against the negative prompt; phi sees the plain prompt and the camera condition [B, 16].
    """
    b = latents.shape[0]
    t = t.to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    with torch.no_grad():
        x_t = prior.add_noise(latents.detach(), noise, t)
        cond = text.for_views(view_labels) if view_labels is not None else text.plain(b)
        eps_pretrained = prior.eps_pretrained(x_t, t, cond, text.negative(b), cfg_scale)
        if mode == "vsd":
            eps_phi = prior.eps_phi(x_t, t, text.plain(b), camera, phi_cfg_scale)
        elif mode == "sds":
            eps_phi = noise
        else:
            raise ValueError(f"unknown score-distillation mode {mode!r}")
        w = weight(prior.alphas_cumprod, t).view(-1, *([1] * (latents.ndim - 1)))
        grad = torch.nan_to_num(w * (eps_pretrained - eps_phi))
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)
    return Distillation(
        loss=surrogate_loss(latents, grad),
        grad=grad,
        t=t,
        noise=noise,
        grad_norm=grad.flatten(1).norm(dim=1).mean().item(),
    )
