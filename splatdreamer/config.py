"""Every setting of a generation, as nested dataclasses that tyro turns into CLI flags.

Defaults name their source. "official" is thu-ml/prolificdreamer, "threestudio" its
configs/prolificdreamer.yaml; the notes in ../shared/notes/vsd.md give file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from splatdreamer.background import BackgroundMode
from splatdreamer.cameras import DEFAULT_RANGES, CameraRanges
from splatdreamer.errors import ConfigError
from splatdreamer.io.files import NotARegularFile, open_regular_file

TOY_PRIOR = "toy"
DEFAULT_PRIOR = "stabilityai/stable-diffusion-2-1-base"  # official nerf/sd.py: sd_version 2.1 -> 2-1-base


@dataclass
class PriorConfig:
    """The frozen text-to-image model and phi, its LoRA copy."""

    name: str = DEFAULT_PRIOR
    """A diffusers Stable Diffusion directory, a hub id already in the local HF cache, or 'toy' (the embedded prior)."""
    phi_base: str | None = None
    """A second SD directory or cached hub id whose UNet carries phi; None = phi's LoRA on the pretrained UNet itself
    (one UNet in memory). The official code puts phi on SD 2.1 (v-prediction, 768 px) beside SD 2.1-base."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights of the frozen UNet/VAE: auto = float16 on CUDA, float32 on CPU. LoRA weights stay float32."""
    lora_rank: int = 4
    """LoRA rank of phi (official: diffusers LoRAAttnProcessor rank 4)."""
    phi_lr: float = 1e-4
    """AdamW learning rate of phi (official main.py --unet_lr 1e-4)."""
    phi_warmup_steps: int | None = None
    """Linear warm-up of phi's learning rate, in phi steps; None = 2 % of the run's phi steps, the official ratio
    (utils.py: LambdaLR over warm_iters = 500 of 25k steps), so a short run does not spend a quarter of itself warming up."""
    phi_steps: int = 1
    """phi updates per 3D step (official --K 1)."""
    camera_dropout: float = 0.1
    """Probability of zeroing the camera while training phi (official --uncond_p 0.1)."""
    phi_timesteps: Literal["uniform", "schedule", "asked"] = "uniform"
    """The t phi trains at: uniform over all timesteps (official); drawn as the particles' step draws it
    (--vsd.t-schedule), so phi learns the particles where VSD asks it about them; or asked = uniform over the t that
    the score asks phi about, t > --vsd.phi-min-t (all t when that is None, the same as uniform)."""
    phi_cfg_scale: float = 1.0
    """Guidance between camera-conditioned and camera-free phi; 1.0 = camera only (threestudio guidance_scale_lora)."""
    camera_init: Literal["default", "zero"] = "default"
    """Camera embedding's last layer: default = PyTorch's init (official, threestudio), so phi starts away from the
    pretrained model; zero = phi starts exactly as the pretrained model (the LoRA's B is zero too)."""


@dataclass
class VSDConfig:
    """The score-distillation objective."""

    mode: Literal["vsd", "sds"] = "vsd"
    """vsd = ProlificDreamer; sds = DreamFusion's baseline (eps_phi replaced by the sampled noise)."""
    cfg_scale: float | None = None
    """Classifier-free guidance of the pretrained score, in either mode; None = the mode's own scale
    (--vsd.cfg-scale-vsd, --vsd.cfg-scale-sds)."""
    cfg_scale_vsd: float = 7.5
    """The scale of --vsd.mode vsd when --vsd.cfg-scale is None (official run.sh --scale 7.5; the toy preset uses 1)."""
    cfg_scale_sds: float = 100.0
    """The scale of --vsd.mode sds when --vsd.cfg-scale is None (DreamFusion Sec. 3.2: 100)."""
    cfg_max_t: int | None = None
    """Guide the pretrained score only at t <= this; above it the score is unguided (CFG 1), guidance in a limited
    interval (Kynkäänniemi et al. 2024). None: guidance at every t, as the official code. High-noise guidance
    decides little but which mode a sample takes, and there it sharpens the prior's leans (docs/benchmarks.md)."""
    phi_min_t: int | None = None
    """VSD asks phi only at t > this; at or below it the sampled noise stands in for eps_phi (SDS's gradient) and
    phi's UNet does not run; once no later step can draw a t above it, phi stops training too. None: phi at
    every t, as the official code. (docs/benchmarks.md, "phi only where the particles' colours are chosen".)"""
    t_min: int = 20
    """Smallest timestep (official t_range 0.02 of 1000)."""
    t_max: int = 980
    """Largest timestep before annealing (official t_range 0.98 of 1000)."""
    t_max_annealed: int = 500
    """Largest timestep after `anneal_step` (official: 500 after t5_iters)."""
    anneal_step: int = 1000
    """Step at which t_max drops (official 5000 of 25k NeRF steps; 3DGS runs are shorter)."""
    t_schedule: Literal["random", "decreasing"] = "random"
    """How t is drawn. random: uniform in [t_min, t_max], t_max lowered to t_max_annealed at anneal_step (the
    official code). decreasing: t falls linearly from t_max to t_min over the run, each sample within
    +-t_jitter of the line (a time-prioritised schedule, as DreamTime, Huang et al. 2023); t_max_annealed and
    anneal_step are then unused. Particles choose their modes at high t, where VSD's force between them acts
    (docs/benchmarks.md, "When VSD samples")."""
    t_jitter: int = 20
    """decreasing only: each sample's t lies within +-this of the falling line."""
    views_per_particle: int = 1
    """Cameras rendered per particle per step (official batch 1)."""
    grad_clip: float | None = None
    """Clamp the per-element VSD gradient to +-this (threestudio grad_clip, off by default)."""
    view_dependent_prompts: bool = True
    """Append ', front/side/back/overhead view' to the prompt of the pretrained score (official --dir_text)."""

    def guidance(self) -> float:
        """The CFG scale this run uses: `cfg_scale`, or the mode's own scale when it is None."""
        if self.cfg_scale is not None:
            return self.cfg_scale
        return self.cfg_scale_vsd if self.mode == "vsd" else self.cfg_scale_sds


@dataclass
class SplatConfig:
    """The Gaussians of each particle and how they are optimised and rendered."""

    num_init: int = 4096
    """Gaussians per particle at the start (threestudio-3dgs: 4096 points)."""
    init_radius: float = 0.5
    """Radius of the initial ball (DreamGaussian: 0.5)."""
    init_opacity: float = 0.1
    """Initial opacity (DreamGaussian, LucidDreamer: 0.1)."""
    init_color: Literal["grey", "random"] = "grey"
    """Initial colour of each particle: grey (DreamGaussian) or one random colour per particle, so the particles
    start apart."""
    init_color_spread: float = 1.0
    """How far the random start colours lie from grey: 1 = anywhere in [0.2, 0.8]^3, 0.3 = within 0.3 of that
    distance, 0 = grey (the same draws, scaled towards grey)."""
    init_scale: float | None = None
    """Initial standard deviation; None = half the mean spacing of the initial points."""
    sh_degree: int = 0
    """Spherical-harmonic degree of the colours (threestudio-3dgs, LucidDreamer: 0)."""
    lr_means: float = 1e-3
    """Learning rate of the positions at the start (threestudio-3dgs position_lr 0.001)."""
    lr_means_final: float = 2e-5
    """... decayed exponentially to this at the last step (threestudio-3dgs 0.00002)."""
    lr_scales: float = 5e-3
    """threestudio-3dgs scaling_lr."""
    lr_quats: float = 5e-3
    """threestudio-3dgs rotation_lr."""
    lr_opacities: float = 5e-2
    """threestudio-3dgs opacity_lr."""
    lr_sh0: float = 1e-2
    """threestudio-3dgs feature_lr."""
    lr_sh0_final: float | None = None
    """... decayed exponentially to this at the last step, as the positions' rate is; None = constant. With
    --vsd.t-schedule decreasing a high lr_sh0 lets the colours change while t is high; on the toy world a low
    final rate did not undo what that costs the shapes (docs/benchmarks.md, "In 3D the colours must move")."""
    lr_shN: float = 5e-4
    """feature_lr / 20, as 3DGS does for the higher SH bands."""
    resolution: int | None = None
    """Render size in pixels; None = the prior's own resolution (512 for SD 2.1-base), times the factor a toy
    prior's training images were supersampled by (`toy train --data.supersample`)."""
    backend: Literal["auto", "gsplat", "reference"] = "auto"
    """Rasterizer: gsplat on CUDA, the pure-PyTorch reference otherwise."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """gsplat's rasterize_mode."""
    packed: bool = False
    """gsplat's packed mode (less memory, slower; simple_trainer defaults to False)."""


@dataclass
class StrategyConfig:
    """Densification and pruning (gsplat strategies), one state per particle."""

    kind: Literal["default", "mcmc", "none"] = "default"
    """default = gsplat DefaultStrategy (runs on CPU); mcmc = gsplat MCMCStrategy (CUDA only); none = fixed count."""
    grow_grad2d: float = 0.05
    """Screen-space gradient that makes a Gaussian grow. Distillation gradients are on another scale than 3DGS's
    0.0002 (scripts/measure_densify.py prints them); the toy preset uses 0.5, measured there (docs/benchmarks.md).
    For Stable Diffusion this value is not measured yet."""
    grow_scale3d: float = 0.01
    """Gaussians smaller than this (x scene scale) are duplicated, larger ones split (gsplat default)."""
    prune_opa: float = 0.005
    """Prune below this opacity (gsplat and threestudio-3dgs default)."""
    prune_scale3d: float = 0.1
    """Prune Gaussians larger than this (x scene scale) after `refine_start` (gsplat default)."""
    refine_start: int = 100
    """First refinement step."""
    refine_stop: int = 0
    """Last refinement step; 0 = 60 % of the run (LucidDreamer 3000/5000, GaussianDreamer 900/1200)."""
    refine_every: int = 100
    """Steps between refinements (gsplat, LucidDreamer: 100)."""
    opacity_reset_every: int = 0
    """Reset opacities to 2 x prune_opa every this many steps; 0 = never (gsplat 1.5.3's own reset never fires,
    so splatdreamer does it explicitly; threestudio-3dgs effectively never resets)."""
    cap_max: int = 200_000
    """Most Gaussians per particle (MCMC's cap; DefaultStrategy growth stops here)."""
    mcmc_noise_lr: float = 5e5
    """MCMCStrategy's noise_lr (gsplat default)."""


@dataclass
class CameraConfig:
    """Random cameras per step and the background behind the renders."""

    radius: tuple[float, float] = DEFAULT_RANGES.radius
    """Distance to the origin (framing for unit-sized objects; official [1.0, 1.5] with fovy [40, 70])."""
    elevation: tuple[float, float] = DEFAULT_RANGES.elevation
    """Degrees above the horizon (threestudio [-10, 45])."""
    azimuth: tuple[float, float] = DEFAULT_RANGES.azimuth
    """Degrees, 0 = front."""
    fovy: tuple[float, float] = DEFAULT_RANGES.fovy
    """Vertical field of view, degrees."""
    background: BackgroundMode = "white"
    """white, black, random (a colour per view) or white_black (either, p = 0.5)."""

    def ranges(self) -> CameraRanges:
        return CameraRanges(radius=self.radius, elevation=self.elevation, azimuth=self.azimuth, fovy=self.fovy)


@dataclass
class OutputConfig:
    """What a run writes and how often."""

    out_dir: Path | None = None
    """Run folder; None = runs/<prompt>."""
    overwrite: bool = False
    """Replace an existing run folder."""
    preview_every: int = 100
    """Steps between preview sheets in previews/ (0 = none)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (0 = only at the end and on Ctrl-C)."""
    turntable_frames: int = 24
    """Frames of the turntable GIF of each particle."""
    preview_size: int = 128
    """Pixel size of the preview and turntable renders."""
    formats: tuple[Literal["ply", "splat", "ply_compressed"], ...] = ("ply",)
    """Files per particle: ply (standard 3DGS), splat (antimatter15), ply_compressed (SuperSplat)."""


@dataclass
class GenerateConfig:
    """One text-to-3D generation."""

    prompt: str = ""
    """What to make, e.g. 'a red ball'."""
    negative_prompt: str = ""
    """Prompt the pretrained score is guided away from (official default '')."""
    steps: int = 2000
    """3D optimisation steps."""
    particles: int = 1
    """VSD particles, each its own set of Gaussians (the paper uses 4 for diversity)."""
    seed: int = 0
    """Seed of every random draw; a CPU run is reproducible bit for bit with the same number of threads."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when available."""
    resume: Path | None = None
    """Continue the run in this folder from its last checkpoint."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)
    splats: SplatConfig = field(default_factory=SplatConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        """Raise `ConfigError` on values no run could use: wrong types, NaN or infinite numbers, values out of
        range (`check_fields` with `BOUNDS`), an empty prompt, an impossible timestep range or camera range."""
        check_fields(self, BOUNDS)
        if not self.prompt.strip():
            raise ConfigError("the prompt is empty; give one, e.g. --prompt 'a red ball'")
        if not 0 <= self.vsd.t_min < self.vsd.t_max_annealed <= self.vsd.t_max < 1000:
            raise ConfigError(
                "timesteps must satisfy 0 <= --vsd.t-min < --vsd.t-max-annealed <= --vsd.t-max < 1000, got "
                f"--vsd.t-min {self.vsd.t_min}, --vsd.t-max-annealed {self.vsd.t_max_annealed}, "
                f"--vsd.t-max {self.vsd.t_max}"
            )
        self.cameras.ranges()  # checks each range
        if not self.output.formats:
            raise ConfigError("--output.formats is empty; give at least one of ply, splat, ply_compressed")
        if len(set(self.output.formats)) < len(self.output.formats):
            twice = sorted({f for f in self.output.formats if self.output.formats.count(f) > 1})
            raise ConfigError(f"--output.formats names {', '.join(twice)} more than once; give each format once")


SLUG_LENGTH = 60  # characters of a prompt kept in its folder's name


def prompt_slug(prompt: str, length: int | None = SLUG_LENGTH) -> str:
    """'A red ball!' -> 'a_red_ball' (a folder name), cut at `length` characters (None: uncut). A prompt with
    letters outside ASCII, which the slug drops, gets a short hash of the whole prompt, so '赤いボール' and
    '青いキューブ' do not share one folder."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:length]
    if any(c.isalnum() and not c.isascii() for c in prompt):
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        return f"{slug}_{digest}" if slug else f"run_{digest}"
    return slug or "run"


def to_dict(config) -> dict:
    """A dataclass as JSON-ready nested dicts (paths and tuples become strings and lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def from_dict(cls, data: dict, prefix: str = ""):
    """Inverse of `to_dict` for our config dataclasses; unknown keys are an error.

    JSON forms become their Python types (lists -> tuples, strings -> paths); whether every value fits its
    field is for `check_fields` to say.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{_flag(prefix.rstrip('.')) if prefix else 'the config'} must be a JSON object "
                          f"{{...}} of {cls.__name__} fields, got {data!r:.60}")  # fmt: skip
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)} in the saved config")
    return cls(**{name: _coerce(hints[name], value, prefix + name) for name, value in data.items()})


def _coerce(hint, value, name: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, name + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value


def get_field(config, dotted: str):
    """The value of a dotted field name ("splats.sh_degree") of a nested config dataclass."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def changed_fields(config, base, prefix: str = "") -> list[str]:
    """Dotted names of the fields in which two configs of the same dataclass differ (nested ones too)."""
    names = []
    for f in dataclasses.fields(config):
        a, b = getattr(config, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            names += changed_fields(a, b, prefix + f.name + ".")
        elif a != b:
            names.append(prefix + f.name)
    return names


def save_json(config: GenerateConfig, path: Path) -> None:
    from splatdreamer.io.atomic import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(to_dict(config), f, indent=2)
        f.write("\n")


def read_text_file(path: str | os.PathLike, flag: str, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`: a device (/dev/zero) or a FIFO named by mistake
    would otherwise be read until memory runs out, or wait forever. `ConfigError` naming `flag` for those;
    OSError (a missing file) and UnicodeDecodeError are the caller's to word."""
    try:
        f = open_regular_file(path)
    except NotARegularFile as e:
        raise ConfigError(f"{flag} {path} is {e.kind}, not a file; give a text file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ConfigError(f"{flag} {path} is {size} bytes; more than {max_bytes} is not a {flag} file, "
                              "check the name")  # fmt: skip
        data = f.read(max_bytes + 1)
    return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first prompt


def load_json(path: Path) -> GenerateConfig:
    try:
        data = json.loads(read_text_file(path, "--config", 1 << 20))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the config {path}: {e}") from None
    try:
        config = from_dict(GenerateConfig, data)
        check_fields(config, BOUNDS)
    except ConfigError as e:
        raise ConfigError(f"the config {path}: {e}; correct it, or start from --preset NAME") from None
    return config



# ---------------------------------------------------------------- checking values
# Every field is checked against its annotation, and every number must be finite (NaN passes any `<`
# comparison; a NaN guidance scale zeroes every gradient). The walk goes by type, so fields added later are
# checked too; ranges beyond that are named here.

MAX_RESOLUTION = 4096  # px; a 4096^2 render of a few hundred thousand Gaussians already needs tens of GB


@dataclass(frozen=True)
class Bound:
    """An interval a number must lie in; None = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    open_high: bool = False  # high itself is excluded

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return "positive" if self.low == 0 and self.open_low else f">= {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


POSITIVE, NON_NEGATIVE = Bound(0, open_low=True), Bound(0)
BOUNDS: dict[str, Bound] = {
    "steps": POSITIVE,
    # Upper ends are sanity limits, far above any real setting, that turn a typo (1e8 particles) into an error
    # instead of minutes of allocation ending in the kernel's out-of-memory killer (a hostile-input pass).
    "particles": Bound(0, 256, open_low=True),  # the paper uses 1-8
    "seed": Bound(0, 2**63 - 2),  # torch seeds are 64-bit; the device generator takes seed + 1
    "prior.lora_rank": Bound(0, 1024, open_low=True),  # past SD's widest attention layer (1280) it adds nothing
    "prior.phi_lr": NON_NEGATIVE,
    "prior.phi_warmup_steps": NON_NEGATIVE,
    "prior.phi_steps": POSITIVE,
    "prior.camera_dropout": Bound(0, 1),
    "prior.phi_cfg_scale": NON_NEGATIVE,
    "vsd.cfg_scale": NON_NEGATIVE,
    "vsd.cfg_scale_vsd": NON_NEGATIVE,
    "vsd.cfg_scale_sds": NON_NEGATIVE,
    "vsd.anneal_step": NON_NEGATIVE,
    "vsd.t_jitter": Bound(0, 999),
    "vsd.cfg_max_t": Bound(0, 999),  # timesteps run 0..999
    "vsd.phi_min_t": Bound(0, 999),
    "vsd.views_per_particle": Bound(0, 64, open_low=True),
    "vsd.grad_clip": POSITIVE,
    "splats.num_init": Bound(0, 10_000_000, open_low=True),  # 59 floats each: 2.4 GB per particle at the top
    "splats.init_radius": POSITIVE,
    "splats.init_opacity": Bound(0, 0.999, open_low=True),  # stored as a logit
    "splats.init_scale": POSITIVE,
    "splats.init_color_spread": Bound(0, 1),
    "splats.sh_degree": Bound(0, 3),  # the 3DGS .ply layout stops at degree 3
    "splats.lr_means": POSITIVE,  # decayed on a log scale
    "splats.lr_means_final": POSITIVE,
    "splats.lr_sh0_final": POSITIVE,
    "splats.lr_scales": NON_NEGATIVE,
    "splats.lr_quats": NON_NEGATIVE,
    "splats.lr_opacities": NON_NEGATIVE,
    "splats.lr_sh0": NON_NEGATIVE,
    "splats.lr_shN": NON_NEGATIVE,
    "splats.resolution": Bound(0, MAX_RESOLUTION, open_low=True),
    "strategy.grow_grad2d": NON_NEGATIVE,
    "strategy.grow_scale3d": NON_NEGATIVE,
    "strategy.prune_opa": Bound(0, 1),
    "strategy.prune_scale3d": POSITIVE,
    "strategy.refine_start": NON_NEGATIVE,
    "strategy.refine_stop": NON_NEGATIVE,
    "strategy.refine_every": POSITIVE,
    "strategy.opacity_reset_every": NON_NEGATIVE,
    "strategy.cap_max": POSITIVE,
    "strategy.mcmc_noise_lr": NON_NEGATIVE,
    "output.preview_every": NON_NEGATIVE,
    "output.checkpoint_every": NON_NEGATIVE,
    "output.turntable_frames": Bound(0, 3600, open_low=True),
    "output.preview_size": Bound(0, MAX_RESOLUTION, open_low=True),
}  # fmt: skip


def check_fields(config, bounds: dict[str, Bound] | None = None, prefix: str = "") -> None:
    """Raise `ConfigError` naming the flag unless every field of the dataclass `config` (nested ones too)
    holds a value of its annotated type, every number is finite, and the numbers named in `bounds`
    (dotted names, e.g. "vsd.cfg_scale"; tuples element-wise) lie in their bounds."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        name, value = prefix + f.name, getattr(config, f.name)
        if isinstance(value, list) and _holds_tuple(hints[f.name]):
            value = tuple(value)  # Python users write [1.6, 2.0]; the config (and its JSON round trip) holds tuples
            setattr(config, f.name, value)
        elif (plain := _plain_number(hints[f.name], value)) is not value:
            value = plain  # np.int64(2), np.float32(7.5): numbers of their own types, which JSON cannot write
            setattr(config, f.name, value)
        check_type(hints[f.name], value, _flag(name))
        if dataclasses.is_dataclass(value):
            check_fields(value, bounds, name + ".")
        elif bounds and name in bounds and value is not None:
            for v in value if isinstance(value, tuple) else (value,):
                if v not in bounds[name]:
                    raise ConfigError(f"{_flag(name)} must be {bounds[name].describe()}, got {value}")


def _plain_number(hint, value):
    """`value` as a Python int or float where the field is one and it is another kind of number (NumPy's, torch's
    via .item() aside); anything else unchanged, for `check_type` to judge."""
    if isinstance(value, bool) or type(value) in (int, float) or not isinstance(value, numbers.Real):
        return value
    inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]  # fmt: skip
    if inner == [int] and isinstance(value, numbers.Integral):
        return int(value)
    if inner == [float]:
        return float(value)
    return value


def _holds_tuple(hint) -> bool:
    """Whether the annotation is a tuple or `tuple | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_holds_tuple(a) for a in typing.get_args(hint))
    return typing.get_origin(hint) is tuple


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_type(hint, value, name: str) -> None:
    """Raise `ConfigError` unless `value` fits the annotation `hint` (and numbers are finite); the message
    calls it `name` (a flag, or a key of a file)."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{name} must be {expected}, got {value!r:.80} ({type(value).__name__})")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise wrong(f"a {hint.__name__}")
    elif origin in (typing.Union, types.UnionType):
        if value is not None or type(None) not in args:
            inner = [a for a in args if a is not type(None)]
            assert len(inner) == 1, f"{name}: only `X | None` unions are checked, not {hint}"
            check_type(inner[0], value, name)
    elif origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise wrong(f"one of {', '.join(map(repr, args))}")
    elif origin is tuple:
        if not isinstance(value, tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                raise wrong("a tuple or list of values")
            raise wrong(f"a tuple or list of {len(args)} values")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise wrong(f"{len(args)} values")
        for i, (a, v) in enumerate(zip(args, value)):
            check_type(a, v, f"{name}[{i}]")
    elif origin is list:
        if not isinstance(value, list):
            raise wrong("a list")
        for i, v in enumerate(value):
            check_type(args[0], v, f"{name}[{i}]")
    elif origin is dict:
        if not isinstance(value, dict):
            raise wrong("a mapping")
        for k, v in value.items():
            check_type(args[0], k, f"{name} key")
            check_type(args[1], v, f"{name}[{k!r}]")
    elif hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise wrong("a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
    elif hint is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise wrong("a path")
    else:
        raise AssertionError(f"{name}: no type check for {hint}; add one to config.check_type")
