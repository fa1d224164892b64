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

The same closed form stands in for the networks of the generation loop: `ExactPrior` for the pretrained model
(and a phi that is exact), `WithExactPhi` for phi alone beside a trained prior; `camera_phi` renders what an
exact, camera-conditioned phi scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from splatdreamer.cameras import VIEW_LABELS
from splatdreamer.prior.diffusion import resize_renders
from splatdreamer.prior.text import TextEmbeddings, view_prompt
from splatdreamer.toy.sample import ancestral_sample

Denoiser = Callable[[Tensor, int | Tensor], Tensor]  # one timestep, or [B] of them


def posterior_mean(
    x: Tensor, abar: Tensor, flat: Tensor, log_pi: Tensor, sq: Tensor | None = None, variance: Tensor | None = None
) -> Tensor:
    """[B, D] E[x0 | x_t] for [B, D] noisy x_t at [B] abar_t, under the mixture of the [N, D] images `flat` with
    [N] log weights, in the dtype given (`sq`: flat's [N] squared norms, when precomputed). `variance`: [B] the
    per-pixel variance of x_t about sqrt(abar_t) x_i, 1 - abar_t unless the components are wider (`exact_phi`'s
    bandwidth); the result is then the mean of the component centres, sum_i w_i x_i."""
    sq = flat.pow(2).sum(1) if sq is None else sq
    variance = 1 - abar if variance is None else variance
    d2 = x.pow(2).sum(1, keepdim=True) - 2 * abar.sqrt()[:, None] * (x @ flat.T) + abar[:, None] * sq[None]  # [B, N]
    w = torch.softmax(log_pi[None] - d2 / (2 * variance)[:, None], dim=1)
    return w @ flat


def eps_from_x0(x: Tensor, abar: Tensor, x0: Tensor) -> Tensor:
    """[B, D] epsilon of noisy x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, given [B, D] x_t, [B] abar_t and x0."""
    return (x - abar.sqrt()[:, None] * x0) / (1 - abar).sqrt()[:, None]


def exact_eps(images: Tensor, weights: Tensor, alphas_cumprod: Tensor, bandwidth: float = 0.0) -> Denoiser:
    """The exact epsilon-predictor of the mixture of [N, C, H, W] images in [-1, 1] with [N] weights, at one
    timestep t or at [B] timesteps, one per sample; computed in float64.

    bandwidth: sigma > 0 makes each image a Gaussian N(x_i, sigma^2 I) instead of a point, a model that knows the
    images only up to sigma per pixel, as one that generalises would. Then x_t about sqrt(abar) x_i has variance
    v = 1 - abar + abar sigma^2 and eps = -sqrt(1 - abar) grad log q_t(x_t)
    = sqrt(1 - abar) (x_t - sqrt(abar) sum_i w_i x_i) / v.
    """
    flat = images.detach().flatten(1).double()
    sq = flat.pow(2).sum(1)
    log_pi = weights.to(flat.device).double().log()

    def eps(x: Tensor, t: int | Tensor) -> Tensor:
        xf = x.flatten(1).double()
        abar = alphas_cumprod.to(xf.device).double()[t].expand(len(xf))
        if bandwidth == 0:
            return eps_from_x0(xf, abar, posterior_mean(xf, abar, flat, log_pi, sq)).view_as(x).to(x.dtype)
        v = 1 - abar + abar * bandwidth**2
        centre = posterior_mean(xf, abar, flat, log_pi, sq, variance=v)
        out = (1 - abar).sqrt()[:, None] * (xf - abar.sqrt()[:, None] * centre) / v[:, None]
        return out.view_as(x).to(x.dtype)

    return eps


def exact_phi(particles: Tensor, alphas_cumprod: Tensor, bandwidth: float = 0.0) -> Denoiser:
    """The exact epsilon of the noised particle distribution, a uniform mixture of the [K, C, h, w] latents
    `particles` (`exact_eps` with equal weights, `bandwidth` as there): eps(x_t, t) = (x_t - sqrt(abar_t)
    E[x0 | x_t]) / sqrt(1 - abar_t) for [B] timesteps t. It is the minimum-error phi for the current particles
    (VSD's eps_phi estimates exactly this score of q_t)."""
    return exact_eps(particles, torch.ones(len(particles)), alphas_cumprod, bandwidth)


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


def exact_phi_of_views(views: Tensor, encode: Callable[[Tensor], Tensor], x_t: Tensor, t: Tensor,
                       alphas_cumprod: Tensor) -> Tensor:  # fmt: skip
    """[B, C, h, w] eps of each noisy sample x_t[i] at t[i] under the uniform mixture of its own K renders
    views[i] ([B, K, 3, H, W], encoded by `encode` as the loop encodes its renders): the exact phi of the
    particles as seen from each sample's camera (`camera_phi`)."""
    with torch.no_grad():
        latents = encode(views.flatten(0, 1))
    latents = latents.view(*views.shape[:2], *latents.shape[1:])
    out = torch.empty_like(x_t)
    for i in range(len(x_t)):
        out[i : i + 1] = exact_phi(latents[i], alphas_cumprod)(x_t[i : i + 1], t[i : i + 1])
    return out


class WithExactPhi:
    """A prior whose phi is replaced by the exact, camera-aware score of the particles (`phi_renders`, as
    `ExactPrior.phi_renders`; set it with `camera_phi` once the run exists); everything else, eps_pretrained
    first, is the wrapped prior's. phi then has no fitting error and no delay, so a run with it tells what the
    LoRA phi costs from what the prior does. The renders are encoded as the loop encodes its own."""

    def __init__(self, prior) -> None:
        self.prior = prior
        self.phi_renders: Callable[[Tensor], Tensor] | None = None
        self._phi_anchor = torch.nn.Parameter(torch.zeros((), device=prior.device))  # for phi's optimiser

    def __getattr__(self, name: str):
        return getattr(self.prior, name)

    def eps_phi(self, x_t: Tensor, t: Tensor, text_cond: Tensor, camera: Tensor, cfg_scale: float = 1.0) -> Tensor:
        if self.phi_renders is None:
            raise RuntimeError("WithExactPhi needs phi_renders (toy.exact.camera_phi of the run)")
        return exact_phi_of_views(self.phi_renders(camera), self.prior.encode_images, x_t, t, self.prior.alphas_cumprod)

    def phi_loss(self, x0: Tensor, *args, **kwargs) -> Tensor:
        return self._phi_anchor * 0.0  # nothing to fit

    def phi_parameters(self) -> list[torch.nn.Parameter]:
        return [self._phi_anchor]

    def phi_state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_phi_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


def camera_phi(run) -> Callable[[Tensor], Tensor]:
    """`ExactPrior.phi_renders` for a `generate.Generation`: all of `run`'s particles rendered as its step renders
    them (same rasterizer, same background) from the camera of each sample, found in the step's cameras
    (`run.last_cameras`) by its condition, the flattened camera-to-world matrix; the field of view is not in
    the condition."""
    from splatdreamer.render import render

    def renders(condition: Tensor) -> Tensor:
        cams, backgrounds = run.last_cameras, run.last_backgrounds
        known = cams.condition()
        mode, packed = run.config.splats.rasterize_mode, run.config.splats.packed
        views = []
        with torch.no_grad():
            for c in condition:
                d = (known - c.to(known)).abs().amax(1)
                i = int(d.argmin())
                if float(d[i]) > 1e-5:
                    raise LookupError("camera_phi was given a camera condition that the step did not draw")
                cam, bg = cams[i], backgrounds[i : i + 1]
                views.append(torch.cat([
                    render(p, cam, bg, backend=run.backend, rasterize_mode=mode, packed=packed).rgb for p in run.particles
                ]))  # fmt: skip
        return torch.stack(views)

    return renders


class ExactPrior:
    """Exact denoisers of weighted image sets in the place of a trained prior, for the 2D sampler and the 3D loop.

    Each prompt names a set of [N, 3, H, W] images in [0, 1] with [N] weights; the empty prompt's set is the
    unconditional branch of classifier-free guidance. It offers what `vsd.score_distillation`,
    `image_sampler.distill_images` and `generate.Generation` use of a `DiffusionPrior` (pixel space, epsilon
    prediction), with eps_pretrained exact: a sampler run against it meets the true score of a chosen
    distribution, so what it draws is the sampler's doing, not a network's. A set named by a view-dependent
    prompt ("a blue cube, front view", `prior.text.view_prompt`) is what the loop's view-dependent prompts ask
    for, as a prior trained on view-labelled images would answer them; a view with no set of its own asks for
    the plain prompt's set.

    phi memorises: `phi_loss` stores the clean renders it is given (all particles' renders of the step) and
    `eps_phi` is then `exact_phi` of them, the score a perfectly fitted phi would have, one step late as the
    LoRA is; before the first `phi_loss`, phi is the pretrained model at CFG 1, as a fresh LoRA is. The camera
    does not enter: phi is the score of the renders over all cameras, which is phi's own score for objects
    that look alike from every side (the toy balls).

    `phi_renders` makes phi exact and camera-aware instead: a function from the [B, 16] camera conditions of a
    batch to [B, K, 3, H, W] renders (as the loop's, in [0, 1] but for overshoot) of all K particles, each from
    that sample's camera. `eps_phi` is then, for each sample, the exact score of the K particles seen from its
    camera, now: the camera-conditioned score of q_t that VSD's eps_phi estimates, with no fitting error and no
    delay.
    """

    phi_renders: Callable[[Tensor], Tensor] | None = None

    camera_dim = 16

    def __init__(self, sets: dict[str, tuple[Tensor, Tensor]], alphas_cumprod: Tensor) -> None:
        if "" not in sets:
            raise ValueError("ExactPrior needs the empty prompt's set '' for the unconditional branch")
        self.prompts = list(sets)
        sizes = {tuple(images.shape[1:]) for images, _ in sets.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 3 or next(iter(sizes))[0] != 3:
            raise ValueError(f"every set must hold [N, 3, H, W] images of one size; got sizes {sorted(sizes)}")
        self.resolution = next(iter(sizes))[-1]
        self.device = torch.device("cpu")
        self.alphas_cumprod = alphas_cumprod.float()
        self.num_train_timesteps = len(alphas_cumprod)
        self._phi_anchor = torch.nn.Parameter(torch.zeros(()))  # for phi's optimiser; it never moves
        self._memory: Tensor | None = None
        self._denoisers = [exact_eps(images * 2 - 1, weights, self.alphas_cumprod) for images, weights in sets.values()]

    def text_embeddings(self, prompt: str, negative_prompt: str = "") -> TextEmbeddings:
        """The prompt and negative prompt as set indices, shaped as text states [1, 1, 1]."""
        for p in (prompt, negative_prompt):
            if p not in self.prompts:
                raise KeyError(f"{p!r} has no image set; the sets are {self.prompts}")
        index = lambda p: torch.tensor([[[float(self.prompts.index(p))]]])  # noqa: E731
        named = {label: view_prompt(prompt, label) for label in VIEW_LABELS}
        views = {label: index(name if name in self.prompts else prompt) for label, name in named.items()}
        return TextEmbeddings(cond=index(prompt), uncond=index(negative_prompt), view=views)

    def token_count(self, prompt: str) -> tuple[int, int]:
        return 1, 1  # a set's name is one token: nothing is cut

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> the image in [-1, 1] (pixel space), resized to the sets' size first as
        `DiffusionPrior.encode_images` resizes (renders at twice the size arrive as their 2 x 2 mean)."""
        return resize_renders(images, self.resolution) * 2.0 - 1.0

    def decode_latents(self, latents: Tensor) -> Tensor:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def _eps(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """[B, 3, H, W] exact epsilon of each sample under its own prompt's set (text [B, 1, 1] indices)."""
        out = torch.empty_like(x_t)
        which = text.reshape(len(x_t), -1)[:, 0].long()
        for i in which.unique().tolist():
            rows = which == i
            out[rows] = self._denoisers[i](x_t[rows], t[rows])
        return out

    @torch.no_grad()
    def eps_pretrained(
        self, x_t: Tensor, t: Tensor, text_cond: Tensor, text_uncond: Tensor, cfg_scale: float | Tensor
    ) -> Tensor:
        """eps_u + s (eps_c - eps_u) with both branches exact, as `DiffusionPrior.eps_pretrained`."""
        eps_u, eps_c = self._eps(x_t, t, text_uncond), self._eps(x_t, t, text_cond)
        if isinstance(cfg_scale, Tensor):
            cfg_scale = cfg_scale.to(eps_u).view(-1, *([1] * (eps_u.ndim - 1)))
        return eps_u + cfg_scale * (eps_c - eps_u)

    def eps_phi(self, x_t: Tensor, t: Tensor, text_cond: Tensor, camera: Tensor, cfg_scale: float = 1.0) -> Tensor:
        """The exact score of the particles from each sample's camera (`phi_renders`), or of the renders
        `phi_loss` last stored; the pretrained model's at CFG 1 before any."""
        if self.phi_renders is not None:
            return exact_phi_of_views(self.phi_renders(camera), self.encode_images, x_t, t, self.alphas_cumprod)
        if self._memory is None:
            return self.eps_pretrained(x_t, t, text_cond, text_cond, 1.0)
        return exact_phi(self._memory, self.alphas_cumprod)(x_t, t)

    def phi_loss(
        self, x0: Tensor, text_cond: Tensor, camera: Tensor, generator: torch.Generator | None = None,
        camera_dropout: float = 0.1, t: Tensor | None = None, t_min: int = 0,
    ) -> Tensor:  # fmt: skip
        """Memorise the clean renders [B, 3, H, W], phi's whole training; a zero loss with a graph, for the loop."""
        self._memory = x0.detach().clone()
        return self._phi_anchor * 0.0

    def phi_parameters(self) -> list[torch.nn.Parameter]:
        return [self._phi_anchor]

    def phi_state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_phi_state_dict(self, state: dict[str, Tensor]) -> None:
        self._memory = None
