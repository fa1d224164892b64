"""Train the toy prior from scratch: the standard epsilon-prediction loss of DDPM (Ho et al. 2020, Eq. 14)
on renders of the toy objects, the UNet and the text encoder jointly, with an EMA of the weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from splatdreamer.cameras import VIEW_LABELS
from splatdreamer.config import BOUNDS, NON_NEGATIVE, POSITIVE, Bound, check_fields
from splatdreamer.errors import ConfigError
from splatdreamer.prior.text import view_prompt
from splatdreamer.toy.data import (
    ToyDataConfig, ToyDataset, caption_groups, check_scale, conditional_weights, draw_batch, load_or_render,
    unconditional_weights, world_objects,
)  # fmt: skip
from splatdreamer.toy.exact import eps_from_x0, posterior_mean
from splatdreamer.toy.model import (
    TRAIN_TIMESTEPS, ToyModelConfig, ToyPriorParts, build, build_tokenizer, encode_prompts, load, save,
)  # fmt: skip
from splatdreamer.toy.objects import PROMPTS, variants

# The schedules diffusers' DDPMScheduler implements in every version this project supports (>= 0.30).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")

# Ranges of `toy train`'s numbers, checked by `config.check_fields` with every field's type and finiteness.
TRAIN_BOUNDS: dict[str, Bound] = {
    "seed": BOUNDS["seed"],
    "steps": POSITIVE,
    "batch_size": POSITIVE,
    "lr": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "grad_clip": POSITIVE,
    "p_uncond": Bound(0, 1, open_high=True),
    "max_loss_weight": Bound(1),
    "guided_weight": NON_NEGATIVE,
    "guided_cfg": Bound(1),
    "guided_min_t": NON_NEGATIVE,
    "guided_batch": POSITIVE,
    "guided_low_batch": NON_NEGATIVE,
    "cross_prompt_batch": NON_NEGATIVE,
    "cross_prompt_min_t": NON_NEGATIVE,
    "keep_init_below_t": NON_NEGATIVE,
    "keep_init_weight": NON_NEGATIVE,
    "ema_decay": Bound(0, 1, open_high=True),
    "save_every": POSITIVE,
    "log_every": POSITIVE,
    "num_threads": POSITIVE,
    "data.views_per_prompt": POSITIVE,
    "data.resolution": POSITIVE,
    "data.supersample": POSITIVE,
    "data.seed": BOUNDS["seed"],
    "data.chunk": POSITIVE,
    "model.resolution": POSITIVE,
    "model.block_out_channels": POSITIVE,
    "model.layers_per_block": POSITIVE,
    "model.attention_heads": POSITIVE,
    "model.text_hidden_size": POSITIVE,
    "model.text_layers": POSITIVE,
    "model.max_length": POSITIVE,
}


@dataclass
class ToyTrainConfig:
    """Training run of the toy prior."""

    out_dir: Path = Path("splatdreamer/toy/prior")
    """Where the diffusers directory is written (replaced atomically at each save)."""
    data_dir: Path = Path(".toydata")
    """Cache of the rendered dataset (outside the package)."""
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    """What to render."""
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    """Sizes of the prior."""
    seed: int = 0
    """Seed of the initialisation, the batches, the noise and the prompt dropout."""
    steps: int = 1800
    """Optimiser steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (small models take larger rates than SD's 1e-4)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    p_uncond: float = 0.15
    """Probability of training on the empty prompt (classifier-free guidance; Ho & Salimans 2022 use 0.1-0.2)."""
    prompt_scale: dict[str, float] = field(default_factory=dict)
    """Extra weight of chosen prompts in the captioned draws, e.g. `--prompt-scale "a ball" 3` (default: every
    prompt equally often)."""
    uncond_object_scale: dict[str, float] = field(default_factory=dict)
    """Factors on chosen objects' shares of the empty-prompt draws, e.g. `--uncond-object-scale "blue cube" 0.5`
    (default: every object equally often; see `toy.data.unconditional_weights`)."""
    cond_object_scale: dict[str, float] = field(default_factory=dict)
    """Factors on chosen objects' shares of the captioned draws, under every prompt that shows them, e.g.
    `--cond-object-scale "green ball" 0.5` (default: every image equally often; see
    `toy.data.conditional_weights`). Made for "a ball"'s balance at CFG 1, which guidance does not touch: the
    priors trained on supersampled images drew it green 37-41 % of the time, and 23 % with this factor at 0.5
    (docs/benchmarks.md, "A thirteenth prior")."""
    loss_weighting: Literal["epsilon", "snr+1"] = "epsilon"
    """Per-timestep weight of the epsilon loss. "epsilon": 1 (Ho et al. 2020). "snr+1": 1 / abar_t, capped at
    max_loss_weight, which weights the x0 error by SNR + 1 as v-prediction's loss does (Salimans & Ho 2022,
    Sec. 4). The epsilon loss weights the x0 error by SNR alone, about 0.02 at t = 900 on the cosine schedule,
    so the high-noise steps where the colour of "a ball" is decided barely count."""
    max_loss_weight: float = 20.0
    """Cap of the "snr+1" weight (1 / abar_t grows without bound as t nears 1000)."""
    target: Literal["noise", "posterior"] = "noise"
    """What eps_theta is fitted to. "noise": the noise drawn for the example (Ho et al. 2020). "posterior": the
    noise implied by the exact posterior mean E[x0 | x_t, y] over all of the prompt's training images, as the
    stable target field of Xu et al. 2023 with the whole training set as the reference batch. Both have the
    same minimiser; the posterior target removes the variance of the drawn one, which at high noise is far
    larger than the few-hundredths colour differences that guidance multiplies (`toy.train.PosteriorTargets`)."""
    guided_weight: float = 0.0
    """Weight of a second loss on the guided prediction (0: off). Each step also draws `guided_batch` captioned
    examples at t >= guided_min_t and fits eps_u + s (eps_c - eps_u), with s = guided_cfg, to the same
    combination of the exact targets E[eps | x_t, y] and E[eps | x_t, ""] (`guided_loss`). Guidance multiplies the
    network's cond-minus-empty error by s - 1 where the colour of "a ball" is decided (t >= 900): errors of a
    few hundredths that the plain loss barely sees are what sent "a ball" to red at CFG 7.5
    (`scripts/measure_high_t_pull.py`). This loss trains that difference directly."""
    guided_cfg: float = 7.5
    """The guidance scale s of the guided loss (the official VSD scale, the toy preset's until 2026-11-29)."""
    guided_min_t: int = 850
    """Lowest timestep of the guided loss's examples (the colour is decided above about 900)."""
    guided_batch: int = 16
    """Captioned examples per step for the guided loss (each costs two network passes)."""
    guided_low_batch: int = 0
    """Captioned examples per step for the guided loss at t < guided_min_t as well (0: none). Sampling guides
    every step, and below guided_min_t guidance multiplies the cond-minus-empty error by s - 1 just as above it:
    the guided fine-tunes drew the red ball pale at CFG 7.5 (colour error 0.045) from those steps, and right at
    CFG 1. Added to the guided_batch examples at t >= guided_min_t, which keep their share of the loss."""
    cross_prompt_batch: int = 0
    """Examples per step of another prompt's image under a captioned prompt (0: off), noised at t >=
    cross_prompt_min_t and fitted to the exact E[eps | x_t, y] of the prompt's own images (`cross_prompt_loss`).
    Score distillation asks the prior about renders that are not yet the prompt's object (a yellow ball under
    "a red ball"), and the exact denoiser pulls them to the prompt; the data alone never shows the network
    such a pair, and the guided fine-tunes lost that pull below t = 850 (`scripts/measure_high_t_pull.py
    --prompt "a red ball"`, docs/benchmarks.md)."""
    cross_prompt_min_t: int = 700
    """Lowest timestep of the cross-prompt examples."""
    cross_prompt_pairs: Literal["all", "same-shape"] = "all"
    """Which prompts an image is asked under by the cross-prompt loss. "all": every other captioned prompt.
    "same-shape": only the prompts whose objects have the image's shape (a yellow ball under "a red ball" or
    "a ball", the blue cube under "a two-tone cube"), so the question is the colour alone; the cone has no
    such partner and is left out. Measured on F's recipe (docs/benchmarks.md): "same-shape" drew "a ball"
    evenly at CFG 7.5 on two seeds, where "all" leaned green (29 of 64); both draw the red ball too big."""
    init_from: Path | None = None
    """Start from the weights of this prior directory (same model sizes) instead of a fresh initialisation."""
    keep_init_below_t: int = 0
    """With init_from: below this timestep the plain loss's target is the starting prior's own prediction, so
    a fine-tune aimed at high noise (the guided loss) keeps what the starting prior does at lower noise (0: off).
    Made for the guided fine-tunes' paler red ball (colour error 0.026 to 0.049), which comes from their steps
    below t = 850; measured, it does not keep that colour at weight 1 or 10 (docs/benchmarks.md)."""
    keep_init_weight: float = 1.0
    """Weight of the examples below keep_init_below_t in the plain loss (how hard the fine-tune is held to the
    starting prior there)."""
    ema_decay: float = 0.999
    """EMA of the weights that gets saved; warmed up as min(decay, (1 + step) / (10 + step))."""
    save_every: int = 200
    """Steps between checkpoints of the EMA weights to out_dir (a killed run still leaves a usable prior)."""
    log_every: int = 25
    """Steps between progress lines."""
    num_threads: int = 1
    """torch CPU threads. On a shared 2-core machine 2 threads win alone (1.3 vs 1.7 s per batch of 32) but
    stall to >10 s per batch beside another busy process (every op waits for the descheduled thread)."""

    def __post_init__(self) -> None:
        # Types, finiteness and TRAIN_BOUNDS first: each bad number would otherwise fail deep in torch or diffusers,
        # or (lr inf, ema_decay 2, grad_clip NaN) save a prior of NaN weights with exit 0.
        check_fields(self, TRAIN_BOUNDS)
        if not self.model.block_out_channels:
            raise ConfigError("--model.block-out-channels needs one or more positive widths, got ()")
        if self.model.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown --model.beta-schedule {self.model.beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.init_from is not None and not (Path(self.init_from) / "unet" / "config.json").exists():
            raise ConfigError(
                f"init_from {self.init_from} is not a prior directory (no unet/config.json); pass a directory "
                "that `toy train` wrote, e.g. splatdreamer/toy/prior"
            )
        if self.data.backend == "gsplat":  # the objects are built on the CPU, where gsplat's kernels cannot run
            raise ConfigError("--data.backend gsplat: the toy data is rendered on the CPU, which gsplat cannot do; "
                              "use --data.backend reference (the default)")  # fmt: skip
        if self.keep_init_below_t and self.init_from is None:
            raise ConfigError(f"--keep-init-below-t {self.keep_init_below_t} keeps the starting prior's predictions, "
                              "and there is none; add --init-from PRIOR_DIR, or leave --keep-init-below-t at 0")  # fmt: skip
        if self.keep_init_below_t > TRAIN_TIMESTEPS:
            raise ConfigError(f"--keep-init-below-t {self.keep_init_below_t} is beyond the schedule's "
                              f"{TRAIN_TIMESTEPS} timesteps; use e.g. 850")  # fmt: skip
        if self.guided_min_t >= TRAIN_TIMESTEPS:
            raise ConfigError(f"--guided-min-t {self.guided_min_t} leaves no timestep below the schedule's "
                              f"{TRAIN_TIMESTEPS}; use e.g. 850")  # fmt: skip
        if self.cross_prompt_min_t >= TRAIN_TIMESTEPS:
            raise ConfigError(f"--cross-prompt-min-t {self.cross_prompt_min_t} leaves no timestep below the "
                              f"schedule's {TRAIN_TIMESTEPS}; use e.g. 700")  # fmt: skip
        if self.guided_low_batch and not self.guided_weight:
            raise ConfigError(f"--guided-low-batch {self.guided_low_batch} adds examples to the guided loss, which "
                              "is off; set --guided-weight (e.g. 1) or leave --guided-low-batch at 0")  # fmt: skip
        if self.guided_low_batch and self.guided_min_t == 0:
            raise ConfigError(f"--guided-low-batch {self.guided_low_batch} draws timesteps below --guided-min-t, "
                              "which is 0; raise --guided-min-t (e.g. 850) or leave --guided-low-batch at 0")  # fmt: skip
        if self.cross_prompt_pairs != "all" and not self.cross_prompt_batch:
            raise ConfigError(f"--cross-prompt-pairs {self.cross_prompt_pairs} chooses the cross-prompt loss's "
                              "pairs, and that loss is off; set --cross-prompt-batch (e.g. 16) or drop "
                              "--cross-prompt-pairs")  # fmt: skip
        check_scale("prompt_scale", self.prompt_scale, PROMPTS)
        check_scale("uncond_object_scale", self.uncond_object_scale, world_objects())
        check_scale("cond_object_scale", self.cond_object_scale, world_objects())
        if self.data.resolution != self.model.resolution:
            raise ConfigError(
                f"data.resolution ({self.data.resolution}) and model.resolution ({self.model.resolution}) differ; "
                "set both to the same size"
            )


@dataclass
class TrainResult:
    """What a run returns: the per-step losses and where the prior went."""

    losses: list[float]  # [steps] batch loss per step
    out_dir: Path
    seconds: float


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine down to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, weighting: str, cap: float) -> torch.Tensor:
    """[B] weights of the epsilon loss at timesteps t (see ToyTrainConfig.loss_weighting)."""
    if weighting == "epsilon":
        return torch.ones(t.shape)
    return (1.0 / alphas_cumprod[t].float()).clamp(max=cap)


class PosteriorTargets:
    """Epsilon targets from the exact posterior mean of the training set (Xu et al. 2023, "Stable Target Field
    for Reduced Variance Score Estimation in Diffusion Models", with every training image as the reference).

    The drawn noise eps is an unbiased but noisy target for E[eps | x_t, y]. At t = 925 on the cosine schedule
    an x0 error is 8.5 times the eps error, so a drawn target moves a ball's predicted mean colour by about 0.85
    per example, and a 32-example batch that holds a few examples of a prompt at high noise leaves the network's
    estimate noisy by a few hundredths: the size of the cond-minus-empty errors that CFG 7.5 multiplies
    (`scripts/measure_guidance_error.py`). The exact target E[eps | x_t, y] = (x_t - sqrt(abar) E[x0 | x_t, y]) /
    sqrt(1 - abar) has no such variance. Its reference set is what the prompt was trained on: the prompt's images
    for "a ball", those of one view label for "a ball, front view", and every image with the empty prompt's
    weights for "". Measured on the seventh prior's recipe (docs/benchmarks.md, the eighth prior): it cut the
    green error at t = 925 from -0.03 to -0.01, and "a ball" at CFG 7.5 went from 91 % red to a red/blue split.
    """

    def __init__(self, data: ToyDataset, images: Tensor, uncond_weights: Tensor) -> None:
        flat = images.flatten(1).double()
        self.groups: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for key, index in caption_groups(data).items():
            weights = uncond_weights[index] if key == "" else torch.ones(len(index))
            ref = flat if key == "" else flat[index]  # the empty prompt's set is every image: no copy
            self.groups[key] = (ref, ref.pow(2).sum(1), weights.double().log())

    def eps(self, noisy: Tensor, t: Tensor, prompts: list[str], alphas_cumprod: Tensor) -> Tensor:
        """[B, C, H, W] E[eps | x_t, y] for the noisy batch at timesteps t [B] and its prompts."""
        out = torch.empty(noisy.shape, dtype=torch.float64)
        for key in set(prompts):
            if key not in self.groups:
                raise KeyError(f"no training images for the prompt {key!r}")
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == key])
            ref, sq, log_pi = self.groups[key]
            abar = alphas_cumprod[t[rows]].double()
            x = noisy[rows].flatten(1).double()
            out[rows] = eps_from_x0(x, abar, posterior_mean(x, abar, ref, log_pi, sq)).view(-1, *noisy.shape[1:])
        return out.to(noisy.dtype)


def diffusion_loss(
    parts: ToyPriorParts, images: torch.Tensor, prompts: list[str], g: torch.Generator,
    weighting: str = "epsilon", cap: float = 20.0, targets: PosteriorTargets | None = None,
    teacher: ToyPriorParts | None = None, teacher_below_t: int = 0, teacher_weight: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """Mean of w(t) || eps - eps_theta(sqrt(abar) x + sqrt(1 - abar) eps, t, y) ||^2 over [B, 3, H, W] x in [-1, 1];
    with `targets`, eps in the norm is E[eps | x_t, y] over the training set instead of the drawn noise; with
    `teacher`, it is the teacher's eps(x_t, t, y) wherever t < teacher_below_t, and those examples weigh
    teacher_weight times as much."""
    b = images.shape[0]
    t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (b,), generator=g)
    noise = torch.randn(images.shape, generator=g)
    noisy = parts.scheduler.add_noise(images, noise, t)
    target = noise if targets is None else targets.eps(noisy, t, prompts, parts.scheduler.alphas_cumprod)
    low = t < teacher_below_t
    if teacher is not None and bool(low.any()):
        with torch.no_grad():
            kept = teacher.unet(noisy[low], t[low], encoder_hidden_states=encode_prompts(
                teacher, [p for p, keep in zip(prompts, low.tolist()) if keep])).sample  # fmt: skip
        target = target.clone()
        target[low] = kept
    pred = parts.unet(noisy, t, encoder_hidden_states=encode_prompts(parts, prompts)).sample
    per_example = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    if teacher is not None:
        per_example = torch.where(low, teacher_weight * per_example, per_example)
    return (loss_weights(parts.scheduler.alphas_cumprod, t, weighting, cap) * per_example).mean()


def guided_loss(
    parts: ToyPriorParts, images: Tensor, prompts: list[str], g: torch.Generator, targets: PosteriorTargets,
    cfg: float, min_t: int, max_t: int | None = None,
) -> Tensor:  # fmt: skip
    """Mean || guided(eps_theta) - guided(E[eps | x_t, .]) ||^2 over captioned examples x [B, 3, H, W] noised at
    t ~ U[min_t, max_t) (max_t: the schedule's T by default), where guided(e) = e(x_t, "") + cfg (e(x_t, y) -
    e(x_t, "")) is classifier-free guidance (Ho & Salimans 2022) and E[eps | x_t, .] the exact posterior targets
    of the training set. Its minimiser is the plain loss's (both are zero for the exact denoiser); it weights the
    cond-minus-empty error by cfg^2, as guided sampling and score distillation feel it."""
    b = images.shape[0]
    high = parts.scheduler.config.num_train_timesteps if max_t is None else max_t
    t = torch.randint(min_t, high, (b,), generator=g)
    noisy = parts.scheduler.add_noise(images, torch.randn(images.shape, generator=g), t)
    abar = parts.scheduler.alphas_cumprod
    exact_c, exact_u = targets.eps(noisy, t, prompts, abar), targets.eps(noisy, t, [""] * b, abar)
    both = parts.unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=encode_prompts(
        parts, [*prompts, *[""] * b])).sample  # fmt: skip
    pred_c, pred_u = both.chunk(2)
    return F.mse_loss(pred_u + cfg * (pred_c - pred_u), exact_u + cfg * (exact_c - exact_u))


def cross_partners(pairs: str) -> list[list[int]]:
    """For each prompt (an index into PROMPTS), the captioned prompts the cross-prompt loss asks its images
    under: every other one ("all"), or ("same-shape") the others whose objects have its shape."""
    shapes = [{v.name.split()[-1] for v in variants(p)} for p in PROMPTS]
    return [
        [j for j in range(len(PROMPTS)) if j != i and (pairs == "all" or shapes[j] == shapes[i])]
        for i in range(len(PROMPTS))
    ]


def cross_prompt_loss(
    parts: ToyPriorParts, images: Tensor, own: Tensor, g: torch.Generator, targets: PosteriorTargets, min_t: int,
    partners: list[list[int]] | None = None,
) -> Tensor:  # fmt: skip
    """Mean || eps_theta(x_t, t, y) - E[eps | x_t, y] ||^2 over images x [B, 3, H, W] of the prompts `own` [B]
    (indices into PROMPTS), each asked under another captioned prompt y at t ~ U[min_t, T): drawn uniformly from
    every other prompt, or from `partners[own]` (`cross_partners`; each image's list must not be empty)."""
    b = images.shape[0]
    if partners is None:
        other = torch.randint(0, len(PROMPTS) - 1, (b,), generator=g)
        other = other + (other >= own).long()  # every prompt but the image's own, equally often
    else:
        pick = torch.rand(b, generator=g)
        other = torch.tensor([partners[int(k)][int(u * len(partners[int(k)]))] for k, u in zip(own, pick)])
    prompts = [PROMPTS[int(k)] for k in other]
    t = torch.randint(min_t, parts.scheduler.config.num_train_timesteps, (b,), generator=g)
    noisy = parts.scheduler.add_noise(images, torch.randn(images.shape, generator=g), t)
    target = targets.eps(noisy, t, prompts, parts.scheduler.alphas_cumprod)
    pred = parts.unet(noisy, t, encoder_hidden_states=encode_prompts(parts, prompts)).sample
    return F.mse_loss(pred, target)


def read_training_record(prior_dir: Path) -> dict | None:
    """The training.json `toy train` wrote into prior_dir, or None where there is none (a prior from elsewhere)
    or it cannot be read; a fine-tune's record then starts at itself."""
    try:
        record = json.loads((Path(prior_dir) / "training.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def save_atomic(parts: ToyPriorParts, out_dir: Path, meta: dict) -> None:
    """Write to a sibling directory, then swap it in, so out_dir is always a complete prior."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save(parts, tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# What `save_atomic` writes: a folder holding anything else is not a prior, and each save replaces it whole.
PRIOR_ENTRIES = frozenset({"model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae", "training.json"})


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out-dir whose replacement would delete what is not a prior: each save swaps the whole folder
    (and clears its .tmp and .old siblings), so a folder of the user's would be lost without a word."""
    out = Path(out_dir)
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out-dir {out_dir} names no folder of its own; give a new folder, e.g. .prior_train/mine")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ConfigError(f"--out-dir {out_dir} is the current folder or holds it, and every save replaces the whole "
                          "folder; give a new folder, e.g. .prior_train/mine")  # fmt: skip
    for folder in (out, out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")):
        if not folder.exists() and not folder.is_symlink():
            continue
        if not folder.is_dir() or folder.is_symlink():
            raise ConfigError(f"--out-dir {out_dir}: {folder} is {'a link' if folder.is_symlink() else 'a file'}, "
                              "which a save would replace; choose another --out-dir")  # fmt: skip
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in PRIOR_ENTRIES)
        if foreign:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ConfigError(
                f"--out-dir {out_dir}: {folder} holds {listed}, which are not a toy prior's, and every save replaces "
                "that folder whole; choose a new or empty folder, or a prior's own folder to overwrite it"
            )


def check_model(model: ToyModelConfig) -> None:
    """Refuse --model sizes that diffusers or transformers would reject only after the data has been rendered."""
    tokenizer = build_tokenizer(max_length=1024)
    longest = max(len(tokenizer(view_prompt(p, label)).input_ids) for p in PROMPTS for label in VIEW_LABELS)
    if model.max_length < longest:
        raise ConfigError(f"--model.max-length {model.max_length} is shorter than the longest toy prompt with its view "
                          f"({longest} tokens); use at least {longest}")  # fmt: skip
    with torch.random.fork_rng():  # a trial build: the real one, later, draws the same initial weights
        try:
            build(model, seed=0)
        except Exception as e:  # ValueError from diffusers, a validation error of huggingface_hub's from transformers
            why = str(e.__cause__ or e).strip().splitlines()[-1].strip() or type(e).__name__
            d = ToyModelConfig()
            raise ConfigError(f"the --model.* sizes do not fit together ({why}); the defaults fit: --model.block-out-"
                              f"channels {' '.join(map(str, d.block_out_channels))} --model.text-hidden-size "
                              f"{d.text_hidden_size} --model.attention-heads {d.attention_heads}") from None  # fmt: skip


def train(config: ToyTrainConfig) -> TrainResult:
    """Render (or load) the toy dataset and train a toy prior on it; the EMA weights go to config.out_dir."""
    check_out_dir(config.out_dir)
    check_model(config.model)
    torch.set_num_threads(config.num_threads)
    start = time.time()
    data = load_or_render(config.data, config.data_dir)
    print(f"data: {len(data)} images of {config.data.resolution}px ({time.time() - start:.0f} s)", flush=True)
    images = data.images.float() / 127.5 - 1.0  # [N, 3, H, W] in [-1, 1]
    uncond_weights = unconditional_weights(data, config.uncond_object_scale)
    # None keeps the uniform draw (randint), so runs without either scale draw the batches they always drew.
    reweighted = config.prompt_scale or config.cond_object_scale
    cond_weights = conditional_weights(data, config.prompt_scale, config.cond_object_scale) if reweighted else None
    exact = config.target == "posterior" or config.guided_weight > 0 or config.cross_prompt_batch > 0
    targets = PosteriorTargets(data, images, uncond_weights) if exact else None
    # The cross-prompt examples: "all" keeps the plain draw over every image (None), as X was trained.
    partners = cross_partners(config.cross_prompt_pairs) if config.cross_prompt_pairs != "all" else None
    askable = torch.arange(len(data))
    if partners is not None:
        askable = askable[torch.tensor([bool(partners[int(k)]) for k in data.prompt_index])]

    parts = build(config.model, seed=config.seed)
    teacher = None  # the starting prior itself, frozen, where --keep-init-below-t holds the fine-tune to it
    if config.init_from is not None:
        start_from = load(config.init_from)
        try:
            parts.unet.load_state_dict(start_from.unet.state_dict())
            parts.text_encoder.load_state_dict(start_from.text_encoder.state_dict())
        except RuntimeError as e:
            sizes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
            first = sizes[0] if sizes else str(e).splitlines()[0]
            more = f" (and {len(sizes) - 1} more)" if len(sizes) > 1 else ""
            raise ConfigError(f"--init-from {config.init_from} has other model sizes than --model: {first}{more}; "
                              "give the --model.* sizes it was trained with") from None  # fmt: skip
        if config.keep_init_below_t:
            start_from.unet.eval().requires_grad_(False)
            start_from.text_encoder.eval().requires_grad_(False)
            teacher = start_from
    ema = ToyPriorParts(copy.deepcopy(parts.unet), copy.deepcopy(parts.text_encoder), parts.tokenizer, parts.scheduler)
    trained = [*parts.unet.parameters(), *parts.text_encoder.parameters()]
    averaged = [*ema.unet.parameters(), *ema.text_encoder.parameters()]
    for p in averaged:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.warmup_steps, config.steps))
    g = torch.Generator().manual_seed(config.seed)
    n_params = sum(p.numel() for p in trained)
    print(f"model: {n_params / 1e6:.2f} M parameters, {config.steps} steps of batch {config.batch_size}", flush=True)

    meta = {"command": shlex.join(sys.argv), "config": asdict(config), "parameters": n_params}
    # A fine-tune is the last stage of a recipe: keep the stages before it, so that the prior's training.json
    # gives every command and the whole recipe's time (`total_seconds`), not this stage's alone.
    earlier = read_training_record(config.init_from) if config.init_from is not None else None
    earlier_seconds = 0.0
    if earlier is not None:
        meta["init_from_training"] = earlier
        seconds = earlier.get("total_seconds", earlier.get("seconds"))
        earlier_seconds = float(seconds) if isinstance(seconds, (int, float)) else 0.0
    losses: list[float] = []
    t0 = time.time()
    for step in range(config.steps):
        index, prompts = draw_batch(data, config.batch_size, config.p_uncond, uncond_weights, g, cond_weights)
        loss = diffusion_loss(
            parts, images[index], prompts, g, config.loss_weighting, config.max_loss_weight,
            targets if config.target == "posterior" else None, teacher, config.keep_init_below_t,
            config.keep_init_weight,
        )  # fmt: skip
        if config.guided_weight > 0:
            guided_index, guided_prompts = draw_batch(data, config.guided_batch, 0.0, uncond_weights, g, cond_weights)
            loss = loss + config.guided_weight * guided_loss(
                parts, images[guided_index], guided_prompts, g, targets, config.guided_cfg, config.guided_min_t
            )
            if config.guided_low_batch:
                low_index, low_prompts = draw_batch(data, config.guided_low_batch, 0.0, uncond_weights, g, cond_weights)
                loss = loss + config.guided_weight * guided_loss(
                    parts, images[low_index], low_prompts, g, targets, config.guided_cfg, 0, config.guided_min_t
                )
        if config.cross_prompt_batch:
            cross = askable[torch.randint(0, len(askable), (config.cross_prompt_batch,), generator=g)]
            loss = loss + cross_prompt_loss(
                parts, images[cross], data.prompt_index[cross], g, targets, config.cross_prompt_min_t, partners
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        opt.step()
        sched.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(averaged, trained, 1 - decay)
        losses.append(loss.item())

        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            rate = done / (time.time() - t0)
            recent = sum(losses[-config.log_every :]) / len(losses[-config.log_every :])
            print(
                f"step {done}/{config.steps} loss {recent:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{rate:.2f} it/s eta {(config.steps - done) / rate / 60:.1f} min",
                flush=True,
            )
        if done % config.save_every == 0 or done == config.steps:
            meta.update(step=done, seconds=time.time() - start, loss_last_100=sum(losses[-100:]) / len(losses[-100:]))
            meta["total_seconds"] = meta["seconds"] + earlier_seconds
            save_atomic(ema, config.out_dir, meta)
    return TrainResult(losses=losses, out_dir=Path(config.out_dir), seconds=time.time() - start)


def main() -> None:
    """`python -m splatdreamer.toy.train [--steps N ...]`: train with the config from the command line."""
    train(tyro.cli(ToyTrainConfig))


if __name__ == "__main__":
    main()
