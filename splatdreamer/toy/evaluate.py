"""`splatdreamer toy eval`: VSD against SDS on every toy prompt, measured against the ground truth.

For each prompt and method the same generation (steps, seed, particles, cameras) runs through the public
`generate`; every particle is then rendered from the fixed evaluation views and compared with the true
object rendered from the same views:

    iou         silhouette IoU (alpha > 0.5), the paper's "does it have the right shape"
    color_err   mean absolute RGB error over pixels that are object in both images
    psnr        of the whole image (white background included)
    sat_excess  mean HSV saturation of the object's pixels minus the true object's (> 0: over-saturated)
    colors      for "a ball": how many of its four colours the particles cover

For a prompt with several true variants ("a ball"), each particle is scored against its closest variant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from splatdreamer import cameras as cams
from splatdreamer.config import GenerateConfig, load_json, prompt_slug, to_dict
from splatdreamer.generate import CONFIG, METRICS, generate
from splatdreamer.io.images import contact_sheet, save_png
from splatdreamer.io.ply import load_ply
from splatdreamer.presets import toy
from splatdreamer.preview import render_views
from splatdreamer.render import render
from splatdreamer.toy.objects import PROMPTS, variants

METHODS = {  # name -> (mode, cfg_scale)
    "vsd": ("vsd", 7.5),  # ProlificDreamer: CFG 7.5 (official run.sh --scale 7.5)
    "sds-100": ("sds", 100.0),  # DreamFusion's usual guidance
    "sds-7.5": ("sds", 7.5),
}


@dataclass
class ToyEvalConfig:
    """Run VSD and SDS on the toy prompts and write one table."""

    prompts: tuple[str, ...] = PROMPTS
    """Prompts to evaluate (the toy world's)."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Methods: vsd (CFG 7.5), sds-100, sds-7.5."""
    particles: int = 4
    """Particles per run, for every method (the paper's VSD uses 4)."""
    steps: int | None = None
    """Steps per run; None = the toy preset's."""
    views_per_particle: int = 1
    """Cameras per particle per step (4 particles x 1 view = the toy preset's batch of 4)."""
    seed: int = 0
    """Seed shared by every run."""
    out_dir: Path = Path("runs/toy-eval")
    """Where the runs and pictures go."""
    size: int = 64
    """Pixel size of the measurement renders."""
    report: Path | None = None
    """Append the table (markdown) to this file, e.g. docs/benchmarks.md."""
    picture: Path | None = None
    """Write the ground-truth-beside-results picture here, e.g. docs/toy_eval.png."""
    reuse: bool = False
    """Score a run already in `out_dir` whose saved config is exactly this one instead of running it again
    (e.g. after running the prompts in parallel processes)."""


@dataclass
class Score:
    iou: float
    color_err: float
    psnr: float
    sat_excess: float
    variant: int  # index of the closest true variant


@dataclass
class Row:
    prompt: str
    method: str
    scores: list[Score]
    colors_covered: int
    seconds: float
    images: Tensor = field(repr=False)  # [particles, 3, H, W] one view per particle for the picture


def saturation(rgb: Tensor) -> Tensor:
    """[..., 3] -> [...] HSV saturation (max - min) / max."""
    hi, lo = rgb.amax(-1), rgb.amin(-1)
    return (hi - lo) / hi.clamp(min=1e-6)


@torch.no_grad()
def score_particle(particle: torch.nn.ParameterDict, prompt: str, size: int) -> Score:
    views = cams.evaluation_views(size, size)
    white = torch.ones(len(views), 3)
    out = render(particle, views, white)
    best = None
    for v, obj in enumerate(variants(prompt)):
        truth = render(obj.splats, views, white)
        mask, true_mask = out.alpha[:, 0] > 0.5, truth.alpha[:, 0] > 0.5
        iou = ((mask & true_mask).sum() / (mask | true_mask).sum().clamp(min=1)).item()
        both = (mask & true_mask)[:, None].expand_as(out.rgb)
        rgb, true_rgb = out.rgb.clamp(0, 1), truth.rgb.clamp(0, 1)
        color_err = ((rgb - true_rgb).abs()[both].mean()).item() if both.any() else 1.0
        mse = ((rgb - true_rgb) ** 2).mean().item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-10))
        ours = saturation(rgb.permute(0, 2, 3, 1)[mask]).mean().item() if mask.any() else 0.0
        theirs = saturation(true_rgb.permute(0, 2, 3, 1)[true_mask]).mean().item()
        score = Score(iou, color_err, psnr, ours - theirs, v)
        if best is None or score.color_err < best.color_err:
            best = score
    return best


def run_config(config: ToyEvalConfig, prompt: str, method: str) -> GenerateConfig:
    """The generation one cell of the table runs: the toy preset with the method's objective."""
    mode, cfg_scale = METHODS[method]
    gen = toy()
    gen.prompt = prompt
    gen.seed = config.seed
    gen.particles = config.particles
    gen.steps = config.steps or gen.steps
    gen.vsd = dataclasses.replace(gen.vsd, mode=mode, cfg_scale=cfg_scale, views_per_particle=config.views_per_particle)
    gen.output = dataclasses.replace(
        gen.output, out_dir=config.out_dir / prompt_slug(prompt) / method, overwrite=True,
        preview_every=0, checkpoint_every=0,
    )  # fmt: skip
    return gen


def finished_run(gen: GenerateConfig) -> list[torch.nn.ParameterDict] | None:
    """The particles of an earlier run of exactly this generation in its folder, or None."""
    run_dir = gen.output.out_dir
    files = [run_dir / f"particle_{k}.ply" for k in range(gen.particles)]
    if not (run_dir / CONFIG).is_file() or not all(f.is_file() for f in files):
        return None
    same = dataclasses.replace(gen, output=dataclasses.replace(gen.output, out_dir=run_dir, overwrite=False))
    if to_dict(load_json(run_dir / CONFIG)) != to_dict(same):
        return None
    return [load_ply(f, requires_grad=False) for f in files]


def loop_seconds(run_dir: Path) -> float:
    """Seconds the generation loop took (the last line of its metrics log)."""
    return json.loads((run_dir / METRICS).read_text().splitlines()[-1])["seconds"]


def run_one(config: ToyEvalConfig, prompt: str, method: str) -> Row:
    gen = run_config(config, prompt, method)
    particles = finished_run(gen) if config.reuse else None
    if particles is None:
        particles = generate(gen).particles
    scores = [score_particle(p, prompt, config.size) for p in particles]
    front = cams.turntable(1, config.size, config.size, elevation=15.0)
    images = torch.cat([render_views(p, front) for p in particles])
    seconds = loop_seconds(gen.output.out_dir)
    return Row(prompt, method, scores, len({s.variant for s in scores}), seconds, images)


def table(rows: list[Row]) -> str:
    lines = [
        "| prompt | method | IoU | colour error | PSNR (dB) | saturation excess | colours covered | loop seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mean = lambda key: sum(getattr(s, key) for s in r.scores) / len(r.scores)  # noqa: E731
        covered = f"{r.colors_covered} of {len(variants(r.prompt))}" if len(variants(r.prompt)) > 1 else "–"
        lines.append(
            f"| {r.prompt} | {r.method} | {mean('iou'):.3f} | {mean('color_err'):.3f} | {mean('psnr'):.1f} | "
            f"{mean('sat_excess'):+.3f} | {covered} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def picture(rows: list[Row], size: int) -> np.ndarray:
    """One row per prompt: the true variants, then each method's particles (front view, elevation 15), in
    columns aligned across prompts under a label band naming them. -> uint8 [H, W, 3]."""
    front = cams.turntable(1, size, size, elevation=15.0)
    prompts = list(dict.fromkeys(r.prompt for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    truth_width = max(len(variants(p)) for p in prompts)
    widths = [truth_width] + [max(r.images.shape[0] for r in rows if r.method == m) for m in methods]
    blank = torch.ones(1, 3, size, size)

    def padded(images: Tensor, width: int) -> Tensor:
        return torch.cat([images, blank.expand(width - images.shape[0], -1, -1, -1)])

    tiles = []
    for prompt in prompts:
        tiles.append(padded(torch.cat([render_views(obj.splats, front) for obj in variants(prompt)]), truth_width))
        for method, width in zip(methods, widths[1:]):
            tiles += [padded(r.images, width) for r in rows if r.prompt == prompt and r.method == method]
    gutter = 2
    sheet = contact_sheet(torch.cat(tiles), columns=sum(widths), gutter=gutter)
    band = Image.new("RGB", (sheet.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    column = 0
    for label, width in zip(["truth", *methods], widths):
        draw.text((column * (size + gutter) + 2, 1), label, fill=(0, 0, 0))
        column += width
    return np.concatenate([np.asarray(band), sheet])


def evaluate(config: ToyEvalConfig) -> list[Row]:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        from splatdreamer.errors import ConfigError

        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    rows = []
    for prompt in config.prompts:
        for method in config.methods:
            rows.append(run_one(config, prompt, method))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    command = "splatdreamer toy eval " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["toy", "eval"] else "toy.evaluate"
    if config.report is not None:
        with open(config.report, "a") as f:
            f.write(f"\n`{command}` ({config.particles} particles, seed {config.seed}):\n\n{text}\n")
    if config.picture is not None:
        save_png(picture(rows, config.size), config.picture)
    return rows
