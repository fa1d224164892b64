"""The toy prior's training data: renders of the toy objects from generation's own camera sampler.

Images come from `splatdreamer.render.render` with cameras from `cameras.sample(..., DEFAULT_RANGES)`
on the white background generation uses by default, so the prior learns exactly the views VSD will
ask it about. Each image keeps its camera's view label, for the view-dependent prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.background import sample_background
from splatdreamer.cameras import DEFAULT_RANGES, Cameras, sample
from splatdreamer.errors import ConfigError
from splatdreamer.prior.text import view_prompt
from splatdreamer.render import render
from splatdreamer.toy.objects import PROMPTS, ToyObject, variants

CACHE_VERSION = 1  # bump when the rendering changes; changes to the objects change the cache key by themselves


@dataclass(frozen=True)
class ToyDataConfig:
    """What to render."""

    views_per_prompt: int = 600
    """Renders per prompt; "a ball" spreads them evenly over its four colours (4800 images: 1 min on 1 core)."""
    resolution: int = 32
    """Image side in pixels (the prior's resolution)."""
    supersample: int = 1
    """Render at `supersample` times the resolution and average each s x s block: the images a generation
    rendering at that multiple hands the prior (`--splats.resolution 64` for a 32-px prior; its bilinear
    resize by exactly 2 is the 2 x 2 mean). Direct 32-px renders show the toy objects 10-15 % bigger than
    64-px ones do, the rasterizer's 0.3-px low-pass being four times larger in area at 32 px
    (docs/benchmarks.md, "The loop's own ceiling")."""
    seed: int = 0
    """Seed of the camera draws."""
    backend: str = "reference"
    """Rendering backend passed to `splatdreamer.render.render`."""
    chunk: int = 64
    """Cameras per render call (bounds memory)."""


@dataclass
class ToyDataset:
    """N rendered views with their prompts and view labels."""

    images: Tensor  # [N, 3, H, W] uint8 RGB
    prompt_index: Tensor  # [N] int64, index into objects.PROMPTS
    variant_index: Tensor  # [N] int64, index into variants(prompt)
    labels: list[str]  # [N] front / side / back / overhead
    elevation: Tensor  # [N] degrees
    azimuth: Tensor  # [N] degrees

    def __len__(self) -> int:
        return self.images.shape[0]

    def prompts(self) -> list[str]:
        """[N] the plain prompt of each image."""
        return [PROMPTS[i] for i in self.prompt_index.tolist()]


def render_views(obj: ToyObject, cameras: Cameras, backend: str = "reference", chunk: int = 64) -> Tensor:
    """[C, 3, H, W] float renders in [0, 1] of one object on white, `chunk` cameras at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, len(cameras), chunk):
            cams = cameras[start : start + chunk]
            background = sample_background("white", len(cams))
            out.append(render(obj.splats, cams, background=background, backend=backend).rgb.clamp(0, 1))
    return torch.cat(out)


def render_as_data(
    obj: ToyObject, cameras: Cameras, supersample: int = 1, backend: str = "reference", chunk: int = 64
) -> Tensor:
    """[C, 3, H, W] renders made as the dataset makes its images: `cameras` sized `supersample` times the image,
    each s x s block averaged (s = 1: the renders themselves). Truth to compare samples with is made this way."""
    return F.avg_pool2d(render_views(obj, cameras, backend, chunk), supersample)


def render_dataset(config: ToyDataConfig) -> ToyDataset:
    """Render every prompt from `views_per_prompt` random cameras (seeded, so the dataset is reproducible)."""
    g = torch.Generator().manual_seed(config.seed)
    images, prompt_index, variant_index, labels, elevation, azimuth = [], [], [], [], [], []
    for p, prompt in enumerate(PROMPTS):
        objs = variants(prompt)
        size = config.resolution * config.supersample
        cameras = sample(config.views_per_prompt, DEFAULT_RANGES, size, size, g)
        which = torch.arange(config.views_per_prompt) % len(objs)  # even split over the variants
        rgb = torch.empty(config.views_per_prompt, 3, config.resolution, config.resolution)
        for v, obj in enumerate(objs):
            idx = (which == v).nonzero()[:, 0]
            if len(idx):  # fewer views than variants leaves some variants out
                rgb[idx] = render_as_data(obj, cameras[idx], config.supersample, config.backend, config.chunk)
        images.append((rgb * 255).round().to(torch.uint8))
        prompt_index.append(torch.full((config.views_per_prompt,), p))
        variant_index.append(which)
        labels += cameras.view_labels()
        elevation.append(cameras.elevation)
        azimuth.append(cameras.azimuth)
    return ToyDataset(
        images=torch.cat(images),
        prompt_index=torch.cat(prompt_index),
        variant_index=torch.cat(variant_index),
        labels=labels,
        elevation=torch.cat(elevation),
        azimuth=torch.cat(azimuth),
    )


def cache_path(config: ToyDataConfig, cache_dir: str | Path) -> Path:
    """The .npz file a config's dataset is cached in; its name hashes the config, the objects' parameters
    and the cache version, so editing an object never reuses stale renders."""
    fields = asdict(config)
    if fields["supersample"] == 1:
        del fields["supersample"]  # caches rendered before the field existed stay valid
    h = hashlib.sha256(json.dumps({**fields, "version": CACHE_VERSION}, sort_keys=True).encode())
    for prompt in PROMPTS:
        h.update(prompt.encode())
        for obj in variants(prompt):
            for value in obj.splats.values():
                h.update(value.detach().numpy().tobytes())
    return Path(cache_dir) / f"toy-{h.hexdigest()[:12]}.npz"


def load_or_render(config: ToyDataConfig, cache_dir: str | Path) -> ToyDataset:
    """The dataset for `config`, read from `cache_dir` if it was rendered before, else rendered and cached."""
    path = cache_path(config, cache_dir)
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"--data-dir {cache_dir} is a file; the dataset cache is a folder, choose another name")
    if path.exists():
        try:
            with np.load(path) as z:
                return ToyDataset(
                    images=torch.from_numpy(z["images"]),
                    prompt_index=torch.from_numpy(z["prompt_index"]),
                    variant_index=torch.from_numpy(z["variant_index"]),
                    labels=[str(s) for s in z["labels"]],
                    elevation=torch.from_numpy(z["elevation"]),
                    azimuth=torch.from_numpy(z["azimuth"]),
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:  # damaged by hand or by a full disk
            print(f"data: the cache {path} cannot be read ({type(e).__name__}: {e}); rendering it again", flush=True)
    data = render_dataset(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")  # write-then-rename: a killed run never leaves half a cache
    np.savez_compressed(
        tmp,
        images=data.images.numpy(),
        prompt_index=data.prompt_index.numpy(),
        variant_index=data.variant_index.numpy(),
        labels=np.array(data.labels),
        elevation=data.elevation.numpy(),
        azimuth=data.azimuth.numpy(),
    )
    os.replace(tmp, path)
    return data


def caption_groups(dataset: ToyDataset) -> dict[str, Tensor]:
    """The indices of the images each caption was trained on: every image for the empty prompt "", a prompt's
    images for it ("a ball"), and those of one view label for its view-dependent form ("a ball, front view").
    Prompts with no images are left out."""
    groups: dict[str, Tensor] = {"": torch.arange(len(dataset))}
    labels = list(dataset.labels)
    for i, prompt in enumerate(PROMPTS):
        mine = (dataset.prompt_index == i).nonzero()[:, 0]
        if len(mine) == 0:
            continue
        groups[prompt] = mine
        for label in sorted({labels[j] for j in mine.tolist()}):
            groups[view_prompt(prompt, label)] = mine[torch.tensor([labels[j] == label for j in mine.tolist()])]
    return groups


def object_names(dataset: ToyDataset) -> list[str]:
    """[N] the distinct object each image shows ("red ball" for both "a red ball" and the red "a ball")."""
    return [variants(PROMPTS[p])[v].name for p, v in zip(dataset.prompt_index.tolist(), dataset.variant_index.tolist())]


def world_objects() -> list[str]:
    """The distinct objects of the toy world, by name ("red ball", "blue cube", ...)."""
    return sorted({v.name for prompt in PROMPTS for v in variants(prompt)})


MAX_SCALE = 1e6  # a share a million times another's already leaves the others undrawn


def check_scale(what: str, scale: dict[str, float], known: Sequence[str]) -> dict[str, float]:
    """`scale` if every key is one of `known` and every factor in (0, 1e6], else a ConfigError naming `what`
    (factors near the float range made the sampling weights sum to infinity, and every draw the same image)."""
    bad = {k: v for k, v in scale.items() if k not in known or not 0 < v <= MAX_SCALE}
    if bad:
        raise ConfigError(f"{what} takes factors in (0, {MAX_SCALE:g}] for {', '.join(known)}; got {bad}")
    return scale


def parse_object_scale(text: str) -> dict[str, float]:
    """'blue cube=0.5,red ball=1.3' -> {'blue cube': 0.5, 'red ball': 1.3} ('' -> {}): the object factors of
    `unconditional_weights` as the measurement scripts take them, checked as `toy train` checks its own."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value) if sep else float("nan")
        except ValueError:
            out[name.strip()] = float("nan")
    return check_scale("the object scale", out, world_objects())


def unconditional_weights(dataset: ToyDataset, object_scale: dict[str, float] | None = None) -> Tensor:
    """[N] sampling weights under which every distinct object of the world is equally likely.

    The images trained on the empty prompt define p(x), and classifier-free guidance scales each sample by
    (p(x | y) / p(x))^(w - 1), so an object commoner under p(x) is suppressed. When "a red ball" was the only
    single-colour ball prompt, uniform draws held five red balls for every yellow one and the first prior drew
    26 of 32 "a ball" samples green at CFG 7.5. Drawn uniformly now, each ball colour would have 750 images
    (600 of its own prompt, 150 of "a ball") against 600 of each other object; with each object equally likely
    under p(x), guidance treats the four colours of "a ball" and the other objects alike.

    That holds for clean images only. Colour is decided at high noise, where a blue ball and the blue cube
    look alike, so there the blue cube adds to blue's share of p(x) and guidance suppresses blue balls.
    `object_scale` multiplies chosen objects' shares (e.g. {"blue cube": 0.5}) to even that out; the
    exact denoiser of the weighted dataset (`scripts/measure_guided_balance.py`) measures the effect.
    """
    names = object_names(dataset)
    counts = Counter(names)
    scale = check_scale("object_scale", object_scale or {}, world_objects())
    return torch.tensor([scale.get(name, 1.0) / counts[name] for name in names], dtype=torch.float64)


def conditional_weights(
    dataset: ToyDataset, prompt_scale: dict[str, float] | None = None, object_scale: dict[str, float] | None = None
) -> Tensor:
    """[N] sampling weights of the conditional (captioned) examples: uniform over images, so every prompt has
    the same share, times `prompt_scale` for chosen prompts (e.g. {"a ball": 3}: the ambiguous prompt must
    learn a four-way split from a quarter of the examples per colour that the other prompts get), times
    `object_scale` for the images of chosen objects under every prompt that shows them (e.g. {"green ball": 0.5}
    draws the green ball less often under both "a green ball" and "a ball")."""
    scale = check_scale("prompt_scale", prompt_scale or {}, PROMPTS)
    factor = torch.tensor([scale.get(p, 1.0) for p in PROMPTS], dtype=torch.float64)
    objects = check_scale("object_scale", object_scale or {}, world_objects())
    per_object = torch.tensor([objects.get(name, 1.0) for name in object_names(dataset)], dtype=torch.float64)
    return factor[dataset.prompt_index] * per_object


def draw_batch(
    dataset: ToyDataset,
    batch_size: int,
    p_uncond: float,
    uncond_weights: Tensor,
    generator: torch.Generator | None = None,
    cond_weights: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """([B] image indices, [B] prompts) for one training step.

    Conditional examples are drawn by `cond_weights` (see `conditional_weights`; None: uniformly over the
    images, equal views per prompt); examples on the empty prompt by `uncond_weights` (see
    `unconditional_weights`).
    """
    if cond_weights is None:
        index = torch.randint(0, len(dataset), (batch_size,), generator=generator)
    else:
        index = torch.multinomial(cond_weights, batch_size, replacement=True, generator=generator)
    prompts = training_prompts(dataset, index, p_uncond, generator)
    empty = torch.tensor([p == "" for p in prompts])
    if empty.any():
        index[empty] = torch.multinomial(uncond_weights, int(empty.sum()), replacement=True, generator=generator)
    return index, prompts


def training_prompts(
    dataset: ToyDataset, index: Tensor, p_uncond: float, generator: torch.Generator | None = None
) -> list[str]:
    """[B] prompts for the images `index`: "" with probability p_uncond (classifier-free guidance),
    else the plain prompt or its `view_prompt` ("a red ball, front view") with equal odds, the two forms the prior
    is asked.
    """
    u = torch.rand(len(index), generator=generator).tolist()
    out = []
    for i, ui in zip(index.tolist(), u):
        prompt = PROMPTS[int(dataset.prompt_index[i])]
        if ui < p_uncond:
            out.append("")
        elif ui < p_uncond + (1 - p_uncond) / 2:
            out.append(prompt)
        else:
            out.append(view_prompt(prompt, dataset.labels[i]))
    return out
