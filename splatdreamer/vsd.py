"""Score distillation as in ProlificDreamer (Wang et al. 2023), Algorithm 1; SDS (DreamFusion) as the special case.

One iteration, for the renders g(theta, c) of the particles, encoded to latents x0 [B, C, h, w]:

    t ~ U{t_min..t_max(step)},  eps ~ N(0, I),  x_t = alpha_t x0 + sigma_t eps
    VSD:    grad = w(t) (eps_pretrained(x_t, t, y^c) - eps_phi(x_t, t, y, c))
    SDS:    grad = w(t) (eps_pretrained(x_t, t, y^c) - eps)
    theta <- theta - lr (grad / B) dx0/dtheta                   via `surrogate_loss`
    phi   <- phi - lr d/dphi ||eps_phi(x'_t, t', y, c) - eps'||^2 on the detached x0 (`DiffusionPrior.phi_loss`)

eps_pretrained is the frozen model with classifier-free guidance on the view-dependent prompt y^c against
the negative prompt; eps_phi is the LoRA + camera embedding on the plain prompt y and the camera c.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from splatdreamer.errors import ConfigError
from splatdreamer.prior import DiffusionPrior, TextEmbeddings
from splatdreamer.timing import NO_TIMER, Timer

Mode = Literal["vsd", "sds"]
PhiScore = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, C, h, w], t [B]) -> eps [B, C, h, w]


def w(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """[B] the weight w(t) = 1 - abar_t (official nerf/sd.py:147; threestudio vsd guidance l.540)."""
    return 1.0 - alphas_cumprod[t]


def guidance_at(t: Tensor, cfg_scale: float, cfg_max_t: int | None) -> float | Tensor:
    """The CFG scale at timesteps t: `cfg_scale` where t <= cfg_max_t (everywhere when it is None), 1 above
    (guidance in a limited interval, `VSDConfig.cfg_max_t`); a float when no interval is set, else like t."""
    return cfg_scale if cfg_max_t is None else torch.where(t <= cfg_max_t, cfg_scale, 1.0)


@dataclass
class TimestepSchedule:
    """random: t ~ U{t_min..t_max}, with t_max lowered to `t_max_annealed` from step `anneal_step` on.
    decreasing: t ~ U{c - jitter..c + jitter} within [t_min, t_max], the centre c falling linearly from t_max at
    step 0 to t_min at step `total_steps` - 1 (a time-prioritised schedule, DreamTime: Huang et al. 2023, whose
    ramp is non-linear). Bounds inclusive."""

    t_min: int = 20  # official nerf/sd.py:71 min_step = 0.02 * 1000 (main.py:77 --t_range 0.02 0.98)
    t_max: int = 980  # official nerf/sd.py:72 max_step = 0.98 * 1000
    t_max_annealed: int = 500  # official nerf/sd.py:109-110: after t5_iters, t ~ randint(20, 501)
    anneal_step: int = 5000  # official main.py:140 --t5_iters 5000 (of 25k NeRF steps); threestudio yaml l.72
    kind: str = "random"
    total_steps: int = 0  # decreasing: the run's length
    jitter: int = 20  # decreasing: half-width of the band about the line

    def __post_init__(self) -> None:
        if not 0 <= self.t_min <= self.t_max_annealed <= self.t_max:
            raise ConfigError(
                f"timesteps need 0 <= t_min <= t_max_annealed <= t_max; got t_min={self.t_min}, "
                f"t_max_annealed={self.t_max_annealed}, t_max={self.t_max}"
            )
        if self.kind not in ("random", "decreasing"):
            raise ConfigError(f"unknown timestep schedule {self.kind!r}; use 'random' or 'decreasing'")
        if self.kind == "decreasing" and self.total_steps < 1:
            raise ConfigError(f"a decreasing timestep schedule needs the run's length, got {self.total_steps} steps")

    def timestep_bounds(self, step: int) -> tuple[int, int]:
        """(lowest, highest) timestep drawn at optimisation step `step`, both inclusive."""
        if self.kind == "random":
            return self.t_min, (self.t_max if step < self.anneal_step else self.t_max_annealed)
        fraction = min(step / max(self.total_steps - 1, 1), 1.0)
        centre = round(self.t_max - (self.t_max - self.t_min) * fraction)
        return max(self.t_min, centre - self.jitter), min(self.t_max, centre + self.jitter)

    def sample_timesteps(self, batch: int, step: int, generator: torch.Generator | None = None) -> Tensor:
        """[batch] int64 timesteps on the generator's device (CPU by default), one per sample.

        One t per sample as threestudio (l.467-473); the official code draws one t for the whole batch.
        """
        lo, hi = self.timestep_bounds(step)
        device = generator.device if generator is not None else "cpu"
        return torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)


@dataclass
class Distillation:
    """One score-distillation evaluation of a batch of B latents."""

    loss: Tensor  # scalar surrogate: d loss / d latents = grad / B
    grad: Tensor  # [B, C, h, w] w(t) (eps_pretrained - eps_phi), or - noise for SDS; nan-free, clamped if asked
    t: Tensor  # [B] the timesteps used
    noise: Tensor  # [B, C, h, w] the eps of x_t = alpha_t x0 + sigma_t eps
    grad_norm: Tensor  # scalar: the batch mean of the per-sample L2 norm of `grad` (a scale diagnostic)
    nonfinite: Tensor  # scalar: the share of entries of w(t) (eps_pretrained - eps_phi) that were NaN or inf


def surrogate_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """0.5 sum (x0 - sg(x0 - grad))^2 / B, whose gradient w.r.t. x0 [B, ...] is exactly grad / B.

    Dividing by B makes the step the *mean* over the batch of per-sample score gradients, so it does not
    grow with particles x views: the official SpecifyGradient returns grad / batch_size (nerf/sd.py:15-27,
    161) and threestudio's loss_vsd = 0.5 mse(sum) / B (l.673-674) is the same.
    """
    target = (latents - grad).detach()
    return 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]


def _eps_phi(
    prior: DiffusionPrior, phi: PhiScore | None, x_t: Tensor, t: Tensor, text: TextEmbeddings, camera: Tensor,
    phi_cfg_scale: float, noise: Tensor, phi_min_t: int | None,
) -> Tensor:
    """phi's eps for the samples with t > phi_min_t (all when None), SDS's noise for the others; phi runs on
    the former only."""

    def score(keep: slice | Tensor) -> Tensor:
        if phi is not None:
            return phi(x_t, t)[keep]
        return prior.eps_phi(x_t[keep], t[keep], text.plain(len(t[keep])), camera[keep], phi_cfg_scale)

    if phi_min_t is None:
        return score(slice(None))
    asked = torch.nonzero(t > phi_min_t).flatten()
    eps = noise.clone()  # SDS's stand-in at t <= phi_min_t
    if len(asked):
        eps[asked] = score(asked)
    return eps


def score_distillation(
    prior: DiffusionPrior,
    latents: Tensor,
    t: Tensor,
    text: TextEmbeddings,
    view_labels: list[str] | None,
    camera: Tensor,
    mode: Mode = "vsd",
    cfg_scale: float = 7.5,
    phi_cfg_scale: float = 1.0,
    grad_clip: float | None = None,
    cfg_max_t: int | None = None,
    generator: torch.Generator | None = None,
    timer: Timer = NO_TIMER,
    phi: PhiScore | None = None,
    phi_min_t: int | None = None,
) -> Distillation:
    """The VSD (or SDS) gradient for `latents` and its surrogate loss: the theta half of Algorithm 1.

    prior: gives eps_pretrained, eps_phi, add_noise and abar.
    latents: [B, C, h, w] from `prior.encode_images`, carrying the graph back to the Gaussians.
    t: [B] timesteps (`TimestepSchedule.sample_timesteps`).
    text: the prompt's embeddings; the pretrained branch sees `text.for_views(view_labels)` (or the plain
        prompt when view_labels is None) against `text.negative`, phi sees `text.plain`.
    view_labels: [B] front / side / back / overhead (`Cameras.view_labels()`), or None.
    camera: [B, 16] phi's camera condition (`Cameras.condition()`); unused by SDS.
    cfg_scale: guidance of eps_pretrained (official run.sh --scale 7.5 for VSD; DreamFusion SDS uses 100).
    phi_cfg_scale: guidance of eps_phi between camera and no camera (threestudio guidance_scale_lora 1.0).
    grad_clip: clamp each element of grad to +-grad_clip (threestudio grad_clip, off by default).
    cfg_max_t: guide only the samples with t <= cfg_max_t; the others get CFG 1 (`VSDConfig.cfg_max_t`).
    generator: for the noise, on the latents' device.
    timer: times the pretrained and phi passes (`splatdreamer.timing`; the loop passes none).
    phi: VSD's eps_phi in place of the prior's LoRA model, e.g. the exact score of the particles' own mixture
        (`toy/exact.exact_phi`, the 2D diagnostic); None: `prior.eps_phi`.
    phi_min_t: VSD asks phi only about the samples with t > phi_min_t; the others get SDS's gradient, the noise in
        phi's place, and phi's UNet does not run for them (`VSDConfig.phi_min_t`). None: phi at every t.
    """
    if mode not in ("vsd", "sds"):
        raise ConfigError(f"unknown score-distillation mode {mode!r}; use 'vsd' or 'sds'")
    b = latents.shape[0]
    assert t.shape == (b,), (t.shape, b)
    t = t.to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    with torch.no_grad():
        x_t = prior.add_noise(latents.detach(), noise, t)
        y_c = text.plain(b) if view_labels is None else text.for_views(view_labels)
        with timer.part("unet_cfg"):
            eps_pretrained = prior.eps_pretrained(x_t, t, y_c, text.negative(b), guidance_at(t, cfg_scale, cfg_max_t))
        if mode == "vsd":
            with timer.part("phi_forward"):
                eps_phi = _eps_phi(prior, phi, x_t, t, text, camera, phi_cfg_scale, noise, phi_min_t)
        else:  # SDS (DreamFusion): the sampled noise stands in for phi's score
            eps_phi = noise
        weight = w(prior.alphas_cumprod, t).view(-1, *([1] * (latents.ndim - 1)))
        # nan_to_num as threestudio l.666-669: one NaN from a half-precision UNet must not poison the Gaussians.
        raw = weight * (eps_pretrained - eps_phi)
        nonfinite = (~torch.isfinite(raw)).float().mean()  # all of it: a broken prior or phi, not one bad value
        grad = torch.nan_to_num(raw)
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)
    return Distillation(
        loss=surrogate_loss(latents, grad),
        grad=grad,
        t=t,
        noise=noise,
        grad_norm=grad.flatten(1).norm(dim=1).mean(),
        nonfinite=nonfinite,
    )
