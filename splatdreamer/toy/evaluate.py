"""`splatdreamer toy eval`: VSD against SDS on every toy prompt, measured against the ground truth.

For each prompt and method the same generation (steps, seed, particles, cameras) runs through the public
`generate`; every particle is then rendered from the fixed evaluation views and compared with the true
object rendered from the same views:

    iou         silhouette IoU (alpha > 0.5), the paper's "does it have the right shape"
    iou outside the same over views the training cameras never took (from below and from high above)
    size        silhouette area over the true object's (> 1: too big; IoU alone does not say which way it errs)
    color_err   mean absolute RGB error over pixels that are object in both images
    psnr        of the whole image (white background included)
    sat_excess  mean HSV saturation of the object's pixels minus the true object's (> 0: over-saturated)
    pure        share of particles whose colour error is below 0.1: a colour the object really has
    colors      for "a ball": how many of its four colours the pure particles cover

For a prompt with several true variants ("a ball"), each particle is scored against its closest variant.
Every cell runs for several seeds; the table gives the mean over seeds and their range.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from splatdreamer import cameras as cams
from splatdreamer import splats as S
from splatdreamer.config import (
    BOUNDS, MAX_RESOLUTION, POSITIVE, Bound, GenerateConfig, check_fields, load_json, prompt_slug, to_dict,
)  # fmt: skip
from splatdreamer.errors import ConfigError
from splatdreamer.generate import CONFIG, METRICS, generate
from splatdreamer.io.files import blocking_file
from splatdreamer.io.images import contact_sheet, save_png
from splatdreamer.io.ply import load_ply
from splatdreamer.presets import toy
from splatdreamer.preview import render_views
from splatdreamer.render import render
from splatdreamer.toy.objects import EVAL_PROMPTS, PROMPTS, variants

DEFAULT_METHODS = ("vsd-7.5", "sds-7.5", "sds-100", "vsd-1", "sds-1")
PURE_COLOR_ERROR = 0.1  # a particle is pure when its colour error against its closest true variant is below this


def parse_method(method: str) -> tuple[str, float]:
    """'vsd-7.5' -> ('vsd', 7.5): the objective and the CFG of the pretrained score.

    vsd-7.5 is ProlificDreamer's setting (official run.sh --scale 7.5), sds-100 DreamFusion's; the -1 columns
    are the plain conditional score, which the toy prior samples best.
    """
    mode, _, scale = method.partition("-")
    try:
        cfg = float(scale)
    except ValueError:
        cfg = math.nan
    if mode not in ("vsd", "sds") or not math.isfinite(cfg) or cfg < 0 or scale != scale.strip():
        raise ConfigError(f"unknown method {method!r}; write MODE-CFG with MODE vsd or sds, e.g. vsd-7.5 or sds-100")
    return mode, cfg


@dataclass
class ToyEvalConfig:
    """Run VSD and SDS on the toy prompts, over seeds, and write one table."""

    prompts: tuple[str, ...] = EVAL_PROMPTS
    """Prompts to evaluate: any of the toy world's; by default one of each shape and "a ball"."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Objective and CFG as MODE-CFG: vsd-7.5 (ProlificDreamer), sds-100 (DreamFusion), sds-7.5, vsd-1, sds-1."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds per prompt and method; the table gives the mean and the spread (min-max) over them."""
    base: GenerateConfig = field(default_factory=toy)
    """The generation every cell runs (the toy preset); prompt, seed, mode, CFG and folder are set per cell,
    any other generate flag can be changed, e.g. --base.prior.phi-steps 2."""
    space: Literal["3d", "image"] = "3d"
    """3d: the generation loop. image: the paper's 2D check, image particles optimised against the prior directly,
    their colours counted beside the prior's own ancestral samples at the same CFG (`toy/image_sampler.py`)."""
    image_particles: int = 8
    """Image particles per run (--space image)."""
    image_steps: int = 400
    """Steps per image run (--space image)."""
    image_init: Literal["grey", "colors"] = "grey"
    """How image particles start (--space image): all mid grey, or each its own random flat colour (the 2D
    counterpart of the toy preset's random colour per 3D particle). Both with pixel noise."""
    image_phi: Literal["lora", "exact"] = "lora"
    """VSD's phi for image particles (--space image): the LoRA model trained alongside (the paper's), or the exact
    score of the particles' own mixture (what a perfectly fitted phi gives; `toy.exact.exact_phi`)."""
    ancestral_samples: int = 64
    """Ancestral samples of the prior counted per CFG (--space image)."""
    out_dir: Path = Path("runs/toy-eval")
    """Where the runs and pictures go."""
    size: int = 64
    """Pixel size of the measurement renders."""
    report: Path | None = None
    """Append the table (markdown) to this file, e.g. docs/benchmarks.md."""
    picture: Path | None = None
    """Write the ground-truth-beside-results picture here (first seed), e.g. docs/toy_eval.png."""
    reuse: bool = False
    """Score a run already in `out_dir` whose saved config is exactly this one instead of running it again
    (e.g. after running the prompts in parallel processes); the folder may have moved since. A run made with
    other settings is run again there, and the settings that differ are named."""


# Ranges of `toy eval`'s numbers and of its base generation's (as `--base.*`), checked by `config.check_fields`
# with every field's type and finiteness before any run.
EVAL_BOUNDS: dict[str, Bound] = {
    "seeds": BOUNDS["seed"],
    "image_particles": POSITIVE,
    "image_steps": POSITIVE,
    "ancestral_samples": POSITIVE,
    "size": Bound(0, MAX_RESOLUTION, open_low=True),
    **{"base." + name: bound for name, bound in BOUNDS.items()},
}


@dataclass
class Score:
    iou: float  # over every scoring view
    iou_outside: float  # over the views outside the training cameras' elevations (from below, from high above)
    color_err: float
    psnr: float
    sat_excess: float
    variant: int  # index of the closest true variant
    size: float = 1.0  # silhouette area over the truth's, all scoring views pooled (1: the right size)

    @property
    def pure(self) -> bool:
        """The particle's colour is one the object really has (SDS's red-blue average is not)."""
        return self.color_err < PURE_COLOR_ERROR


@dataclass
class Row:
    prompt: str
    method: str
    seed: int
    scores: list[Score]
    colors_covered: int
    seconds: float
    images: Tensor = field(repr=False)  # [particles, 3, H, W] one view per particle for the picture


def saturation(rgb: Tensor) -> Tensor:
    """[..., 3] -> [...] HSV saturation (max - min) / max."""
    hi, lo = rgb.amax(-1), rgb.amin(-1)
    return (hi - lo) / hi.clamp(min=1e-6)


def scoring_views(size: int) -> tuple[cams.Cameras, int]:
    """The fixed evaluation views, then 4 from below (elevation -40) and 4 from high above (elevation 75), outside
    the training cameras' [-10, 45] degrees -> (cameras, index of the first outside view)."""
    inside = cams.evaluation_views(size, size)
    below = cams.turntable(4, size, size, elevation=-40.0)
    above = cams.turntable(4, size, size, elevation=75.0)
    return cams.Cameras.cat([inside, below, above]), len(inside)


def _iou(a: Tensor, b: Tensor) -> float:
    """Silhouette IoU of two bool masks [V, H, W] pooled over all their views."""
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


@torch.no_grad()
def score_particle(particle: torch.nn.ParameterDict, prompt: str, size: int) -> Score:
    # Scored on the CPU with the reference rasterizer wherever the particle was made (the truth is a CPU
    # particle), so a GPU run and a CPU run of the same particle get the same numbers.
    particle = S.detached_copy(particle).cpu()
    views, first_outside = scoring_views(size)
    white = torch.ones(len(views), 3)
    out = render(particle, views, white)
    best = None
    for v, obj in enumerate(variants(prompt)):
        truth = render(obj.splats, views, white)
        mask, true_mask = out.alpha[:, 0] > 0.5, truth.alpha[:, 0] > 0.5
        iou, iou_outside = _iou(mask, true_mask), _iou(mask[first_outside:], true_mask[first_outside:])
        both = (mask & true_mask)[:, None].expand_as(out.rgb)
        rgb, true_rgb = out.rgb.clamp(0, 1), truth.rgb.clamp(0, 1)
        color_err = ((rgb - true_rgb).abs()[both].mean()).item() if both.any() else 1.0
        mse = ((rgb - true_rgb) ** 2).mean().item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-10))
        ours = saturation(rgb.permute(0, 2, 3, 1)[mask]).mean().item() if mask.any() else 0.0
        theirs = saturation(true_rgb.permute(0, 2, 3, 1)[true_mask]).mean().item()
        size_ratio = (mask.sum() / true_mask.sum().clamp(min=1)).item()
        score = Score(iou, iou_outside, color_err, psnr, ours - theirs, v, size_ratio)
        if best is None or score.color_err < best.color_err:
            best = score
    return best


def run_config(config: ToyEvalConfig, prompt: str, method: str, seed: int) -> GenerateConfig:
    """The generation one cell of the table runs: the base config (toy preset) with the method's objective."""
    mode, cfg_scale = parse_method(method)
    gen = copy.deepcopy(config.base)
    gen.prompt = prompt
    gen.seed = seed
    gen.resume = None
    gen.vsd = dataclasses.replace(gen.vsd, mode=mode, cfg_scale=cfg_scale)
    gen.output = dataclasses.replace(
        gen.output, out_dir=config.out_dir / prompt_slug(prompt) / method / f"s{seed}", overwrite=True,
        preview_every=0, checkpoint_every=0,
    )  # fmt: skip
    return gen


def saved_particles(gen: GenerateConfig) -> list[torch.nn.ParameterDict] | None:
    """The particles in `gen`'s folder if every one of them is there, else None."""
    files = [gen.output.out_dir / f"particle_{k}.ply" for k in range(gen.particles)]
    if not all(f.is_file() for f in files):
        return None
    return [load_ply(f, requires_grad=False) for f in files]


def settings_differing(gen: GenerateConfig) -> list[str] | None:
    """The settings ("vsd.cfg_scale_vsd", ...) in which the run saved in `gen`'s folder differs from `gen`
    ([]: it is exactly this generation), or None when no config was saved there.

    The folder it was written to is not part of what the run was: a results folder moved or copied elsewhere (or
    linked into another `--out-dir`) is still the same run; nor is `overwrite`."""
    path = gen.output.out_dir / CONFIG
    if not path.is_file():
        return None
    saved = to_dict(load_json(path))
    ours = to_dict(dataclasses.replace(gen, output=dataclasses.replace(gen.output, overwrite=False)))
    saved["output"]["out_dir"] = ours["output"]["out_dir"]

    def walk(a: object, b: object, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(a.keys() | b.keys()) for d in walk(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]

    return walk(saved, ours, "")


def loop_seconds(run_dir: Path) -> float:
    """Seconds the generation loop took (the last line of its metrics log)."""
    return json.loads((run_dir / METRICS).read_text().splitlines()[-1])["seconds"]


def run_one(config: ToyEvalConfig, prompt: str, method: str, seed: int) -> Row:
    gen = run_config(config, prompt, method, seed)
    differing = settings_differing(gen) if config.reuse else None
    particles = saved_particles(gen) if differing == [] else None  # --reuse: exactly this run, finished
    if particles is None:
        if differing:
            print(f"{gen.output.out_dir}: its run was made with other settings ({', '.join(differing)}); running "
                  "it again there", file=sys.stderr, flush=True)  # fmt: skip
        made = generate(gen).particles
        # Score the .ply files the run wrote, as --reuse scores them, where it wrote them: the file keeps some
        # fields in another form than the tensors in memory, and the two scored a last-bit apart (PSNR 3e-7).
        particles = saved_particles(gen) or made
    return scored_row(prompt, method, seed, particles, loop_seconds(gen.output.out_dir), config.size)


def scored_row(
    prompt: str, method: str, seed: int, particles: list[torch.nn.ParameterDict], seconds: float, size: int
) -> Row:
    """One run's line of the table: every particle scored against the prompt's objects at `size` px, the true
    colours its pure particles cover, and a front view of each for the picture."""
    scores = [score_particle(p, prompt, size) for p in particles]
    front = cams.turntable(1, size, size, elevation=15.0)
    images = torch.cat([render_views(S.detached_copy(p).cpu(), front) for p in particles])
    covered = len({s.variant for s in scores if s.pure})
    return Row(prompt, method, seed, scores, covered, seconds, images)


def _stat(values: list[float], digits: int, sign: bool = False) -> str:
    """'mean' for one value, 'mean (min-max)' for several."""
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    mean = fmt.format(sum(values) / len(values))
    if len(values) == 1:
        return mean
    return f"{mean} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def table(rows: list[Row]) -> str:
    """One line per (prompt, method): means over particles, then the mean and range over seeds."""
    lines = [
        "| prompt | method | seeds | IoU | IoU outside | size | colour error | PSNR (dB) | saturation excess | pure | "
        "colours covered | loop seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for prompt, method in dict.fromkeys((r.prompt, r.method) for r in rows):
        group = [r for r in rows if r.prompt == prompt and r.method == method]
        per_seed = lambda key: [sum(getattr(s, key) for s in r.scores) / len(r.scores) for r in group]  # noqa: E731
        n_variants = len(variants(prompt))
        covered = _stat([float(r.colors_covered) for r in group], 2) + f" of {n_variants}" if n_variants > 1 else "–"
        lines.append(
            f"| {prompt} | {method} | {len(group)} | {_stat(per_seed('iou'), 3)} | {_stat(per_seed('iou_outside'), 3)} "
            f"| {_stat(per_seed('size'), 2)} | {_stat(per_seed('color_err'), 3)} | {_stat(per_seed('psnr'), 1)} "
            f"| {_stat(per_seed('sat_excess'), 3, sign=True)} | {_stat(per_seed('pure'), 2)} | {covered} "
            f"| {sum(r.seconds for r in group) / len(group):.0f} |"
        )
    return "\n".join(lines)


def colors_table(rows: list[Row]) -> str:
    """For each prompt with several true variants (the colours of "a ball"): per seed and method, the closest
    variant of each particle by its first letter (r g b r), `*` after an impure one. Empty if no such prompt."""
    lines = []
    for prompt in dict.fromkeys(r.prompt for r in rows):
        names = [v.name for v in variants(prompt)]
        if len(names) < 2:
            continue
        group = [r for r in rows if r.prompt == prompt]
        methods = list(dict.fromkeys(r.method for r in group))
        lines += [f"| {prompt}: seed | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for seed in dict.fromkeys(r.seed for r in group):
            cells = []
            for method in methods:
                run = next((r for r in group if r.seed == seed and r.method == method), None)
                cells.append(
                    "–" if run is None else " ".join(names[sc.variant][0] + ("" if sc.pure else "*") for sc in run.scores)
                )
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).strip()


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
            tiles += [padded(r.images, width) for r in rows if r.prompt == prompt and r.method == method][:1]
    gutter = 2
    sheet = contact_sheet(torch.cat(tiles), columns=sum(widths), gutter=gutter)
    band = Image.new("RGB", (sheet.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    column = 0
    for label, width in zip(["truth", *methods], widths):
        draw.text((column * (size + gutter) + 2, 1), label, fill=(0, 0, 0))
        column += width
    return np.concatenate([np.asarray(band), sheet])


def _command() -> str:
    return "splatdreamer toy eval " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["toy", "eval"] else "toy.evaluate"


def check_config(config: ToyEvalConfig) -> None:
    """Refuse, before any run, what would fail or print an empty table only after minutes of runs."""
    check_fields(config, EVAL_BOUNDS)
    for name in ("prompts", "methods", "seeds"):
        if not getattr(config, name):
            raise ConfigError(f"--{name} is empty; give at least one")
    for method in config.methods:
        parse_method(method)
    unknown = [p for p in config.prompts if p not in PROMPTS]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a toy prompt; the toy prompts are {', '.join(PROMPTS)}")
    default = toy()
    for field_name, value, default_value, instead in [
        ("prompt", config.base.prompt, default.prompt, "--prompts"),
        ("seed", config.base.seed, default.seed, "--seeds"),
        ("vsd.mode", config.base.vsd.mode, default.vsd.mode, "--methods (e.g. sds-100)"),
        ("vsd.cfg-scale", config.base.vsd.cfg_scale, default.vsd.cfg_scale, "--methods (e.g. vsd-7.5)"),
        ("vsd.cfg-scale-vsd", config.base.vsd.cfg_scale_vsd, default.vsd.cfg_scale_vsd, "--methods (e.g. vsd-7.5)"),
        ("vsd.cfg-scale-sds", config.base.vsd.cfg_scale_sds, default.vsd.cfg_scale_sds, "--methods (e.g. sds-100)"),
        ("output.out-dir", config.base.output.out_dir, default.output.out_dir, "--out-dir"),
        ("resume", config.base.resume, default.resume, "--reuse"),
    ]:  # set per cell by run_config: a value given here would be dropped without a word (a hostile-input pass)
        if value != default_value:
            raise ConfigError(f"--base.{field_name} is set for each run of the table; use {instead} instead")
    out = Path(config.out_dir)
    blocked = blocking_file(out)
    if blocked is not None:
        raise ConfigError(f"--out-dir {out}: {blocked} is a file, not a folder; choose another --out-dir")
    if config.space == "image":  # the 3D runs check their prior in generate(); the 2D check loads it itself
        from splatdreamer.generate import resolve_prior_name
        from splatdreamer.prior import loading

        loading.check(loading.resolve(resolve_prior_name(config.base.prior.name)))
    if config.space == "image" and config.picture is not None:
        raise ConfigError(f"--picture draws the 3D runs beside the truth; --space image writes one sheet of "
                          f"particles per run under {config.out_dir / 'image'} instead: leave --picture out")  # fmt: skip
    for name, example in (("report", "benchmarks.md"), ("picture", "toy_eval.png")):
        path = getattr(config, name)
        if path is None:
            continue  # written after every run: a path that cannot be written would lose the table then
        path, flag = Path(path), f"--{name}"
        if path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; give a file name such as {path / example}")
        blocked = blocking_file(path.parent)
        if blocked is not None:
            raise ConfigError(f"{flag} {path}: {blocked} is a file, not a folder; choose another path")
        if not path.parent.is_dir():
            raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist; create it or choose another")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ConfigError(f"{flag} {path} cannot be written (permission denied); choose another file")


def evaluate(config: ToyEvalConfig) -> list[Row]:
    """Run (or reuse) every prompt x method x seed, print and report the table; --space image runs `evaluate_images`."""
    check_config(config)
    if config.space == "image":
        evaluate_images(config)
        return []
    rows = []
    for prompt in config.prompts:
        for method in config.methods:
            for seed in config.seeds:
                rows.append(run_one(config, prompt, method, seed))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    if colors := colors_table(rows):
        text += "\n\nThe closest true variant of each particle (first letter; * after an impure one):\n\n" + colors
    print(text)
    if config.report is not None:
        with open(config.report, "a") as f:
            f.write(f"\n`{_command()}` ({config.base.particles} particles, seeds {list(config.seeds)}):\n\n{text}\n")
    if config.picture is not None:
        save_png(picture(rows, config.size), config.picture)
    return rows


def evaluate_images(config: ToyEvalConfig) -> str:
    """The 2D check. Per CFG: how often the prior's own ancestral samples show each prompt's object
    (`sample.check_prior`) and the colours they take; then the colours of VSD's and SDS's image particles."""
    from splatdreamer.generate import prior_supersample, resolve_prior_name
    from splatdreamer.prior import DiffusionPrior
    from splatdreamer.toy import image_sampler as im
    from splatdreamer.toy.model import load
    from splatdreamer.toy.sample import check_prior

    prior_dir = resolve_prior_name(config.base.prior.name)
    parts = load(prior_dir)
    supersample = prior_supersample(config.base.prior.name)
    n = config.ancestral_samples
    recognised = ["| CFG | " + " | ".join(config.prompts) + " |", "|---|" + "---|" * len(config.prompts)]
    counts, fits = [im.count_header()], [im.fit_header()]
    for cfg_scale in dict.fromkeys(parse_method(m)[1] for m in config.methods):
        checks = check_prior(
            parts, per_prompt=n, guidance_scale=cfg_scale, seed=config.seeds[0], prompts=config.prompts,
            guidance_max_t=config.base.vsd.cfg_max_t, supersample=supersample,
        )  # fmt: skip
        checks = {c.prompt: c for c in checks}
        rates = [checks[p].recognised().float().mean().item() for p in config.prompts]
        sizes = [checks[p].size.mean().item() for p in config.prompts]
        recognised.append(
            f"| {cfg_scale:g} | " + " | ".join(f"{r:.0%}, size {s:.2f}" for r, s in zip(rates, sizes)) + " |"
        )
        print(recognised[-1], flush=True)
        for prompt in config.prompts:
            labels = im.classify_colors(checks[prompt].images)
            counts.append(im.count_row(f"{prompt}: prior's samples", cfg_scale, Counter(labels), n))
            print(counts[-1], flush=True)
            for method in config.methods:
                mode, scale = parse_method(method)
                if scale != cfg_scale:
                    continue
                for seed in config.seeds:
                    prior = DiffusionPrior.from_pretrained(  # a fresh phi for every run, set up as --base says
                        prior_dir, lora_rank=config.base.prior.lora_rank, camera_init=config.base.prior.camera_init
                    )
                    run = im.ImageRunConfig(
                        mode=mode, cfg_scale=scale, cfg_max_t=config.base.vsd.cfg_max_t,
                        particles=config.image_particles, steps=config.image_steps,
                        phi_lr=config.base.prior.phi_lr, phi_steps=config.base.prior.phi_steps, seed=seed,
                        init=config.image_init, phi=config.image_phi, t_schedule=config.base.vsd.t_schedule,
                        t_jitter=config.base.vsd.t_jitter,
                    )  # fmt: skip
                    images = im.distill_images(prior, prompt, run)
                    labels = im.classify_colors(images)
                    counts.append(im.count_row(f"{prompt}: {mode} seed {seed}", scale, Counter(labels), len(labels)))
                    print(counts[-1], flush=True)
                    if mode == "vsd" and config.image_phi == "lora":
                        fits.append(im.fit_row(f"{prompt}: {method} seed {seed}", im.phi_fit(prior, images, prompt)))
                        print(fits[-1], flush=True)
                    save_png(
                        contact_sheet(images, columns=len(images)),
                        config.out_dir / "image" / prompt_slug(prompt) / f"{method}-s{seed}.png",
                    )
    text = (
        f"Share of the prior's {n} ancestral samples per prompt that `check_prior` recognises, and their size "
        "(mean foreground area over the truth's from the same camera distribution; 1: the right size):\n\n"
        + "\n".join(recognised)
        + "\n\nColours of the prior's samples and of the image particles:\n\n"
        + "\n".join(counts)
    )
    if len(fits) > 1:  # none with --image-phi exact, or with SDS alone
        text += (
            "\n\nphi's fit to the VSD particles at the end (its epsilon error over the pretrained model's, "
            "`image_sampler.phi_fit`; below 1 where phi knows the particles better):\n\n" + "\n".join(fits)
        )
    print(text)
    if config.report is not None:
        with open(config.report, "a") as f:
            f.write(f"\n`{_command()}`:\n\n{text}\n")
    return text
