"""Every setting of a generation, as nested dataclasses that tyro turns into CLI flags.

Defaults name their source. "official" is thu-ml/prolificdreamer, "threestudio" its
configs/prolificdreamer.yaml; the notes in ../shared/notes/vsd.md give file and line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from splatdreamer.background import BackgroundMode
from splatdreamer.cameras import DEFAULT_RANGES, CameraRanges
from splatdreamer.errors import ConfigError

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
    """Classifier-free guidance of the pretrained score; None = 7.5 for vsd (official run.sh --scale 7.5) and 100 for
    sds (DreamFusion Sec. 3.2)."""
    t_min: int = 20
    """Smallest timestep (official t_range 0.02 of 1000)."""
    t_max: int = 980
    """Largest timestep before annealing (official t_range 0.98 of 1000)."""
    t_max_annealed: int = 500
    """Largest timestep after `anneal_step` (official: 500 after t5_iters)."""
    anneal_step: int = 1000
    """Step at which t_max drops (official 5000 of 25k NeRF steps; 3DGS runs are shorter)."""
    views_per_particle: int = 1
    """Cameras rendered per particle per step (official batch 1)."""
    grad_clip: float | None = None
    """Clamp the per-element VSD gradient to +-this (threestudio grad_clip, off by default)."""
    view_dependent_prompts: bool = True
    """Append ', front/side/back/overhead view' to the prompt of the pretrained score (official --dir_text)."""

    def guidance(self) -> float:
        """The CFG scale this run uses: `cfg_scale`, or the mode's usual value when it is None."""
        if self.cfg_scale is not None:
            return self.cfg_scale
        return 7.5 if self.mode == "vsd" else 100.0


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
    lr_shN: float = 5e-4
    """feature_lr / 20, as 3DGS does for the higher SH bands."""
    resolution: int | None = None
    """Render size in pixels; None = the prior's own resolution (512 for SD 2.1-base)."""
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
    """Seed of every random draw; a CPU run is reproducible bit for bit."""
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
        """Raise `ConfigError` on values no run could use."""
        if not self.prompt.strip():
            raise ConfigError("the prompt is empty; give one, e.g. --prompt 'a red ball'")
        positive = {
            "steps": self.steps,
            "particles": self.particles,
            "vsd.views_per_particle": self.vsd.views_per_particle,
            "splats.num_init": self.splats.num_init,
            "prior.lora_rank": self.prior.lora_rank,
            "prior.phi_steps": self.prior.phi_steps,
            "strategy.refine_every": self.strategy.refine_every,
            "strategy.cap_max": self.strategy.cap_max,
            "output.turntable_frames": self.output.turntable_frames,
            "output.preview_size": self.output.preview_size,
        }
        if self.splats.resolution is not None:
            positive["splats.resolution"] = self.splats.resolution
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0 <= self.vsd.t_min < self.vsd.t_max_annealed <= self.vsd.t_max < 1000:
            raise ConfigError(
                "timesteps must satisfy 0 <= t_min < t_max_annealed <= t_max < 1000, got "
                f"t_min={self.vsd.t_min}, t_max_annealed={self.vsd.t_max_annealed}, t_max={self.vsd.t_max}"
            )
        if self.vsd.cfg_scale is not None and self.vsd.cfg_scale < 0:
            raise ConfigError(f"--vsd.cfg-scale must be >= 0, got {self.vsd.cfg_scale}")
        if not 0.0 <= self.prior.camera_dropout <= 1.0:
            raise ConfigError(f"--prior.camera-dropout is a probability, got {self.prior.camera_dropout}")
        self.cameras.ranges()  # checks each range


def prompt_slug(prompt: str) -> str:
    """'A red ball!' -> 'a_red_ball' (a folder name)."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return slug[:60] or "run"


def to_dict(config) -> dict:
    """A dataclass as JSON-ready nested dicts (paths and tuples become strings and lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def from_dict(cls, data: dict):
    """Inverse of `to_dict` for our config dataclasses; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)} in the saved config")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _coerce(hint, value):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value)
    if origin is tuple:
        return tuple(value)
    if hint is Path:
        return Path(value)
    return value


def save_json(config: GenerateConfig, path: Path) -> None:
    from splatdreamer.io.atomic import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(to_dict(config), f, indent=2)
        f.write("\n")


def load_json(path: Path) -> GenerateConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the config {path}: {e}") from None
    return from_dict(GenerateConfig, data)
