"""One VSD particle: a set of 3D Gaussians stored the way gsplat's strategies expect.

Storage is pre-activation (log scales, logit opacities, raw wxyz quaternions, spherical-harmonic
colour coefficients), in a `torch.nn.ParameterDict` whose keys are gsplat's names:

    means      [N, 3]       world positions
    scales     [N, 3]       log of the per-axis standard deviations
    quats      [N, 4]       rotation, wxyz, not necessarily normalised
    opacities  [N]          logit of opacity
    sh0        [N, 1, 3]    degree-0 SH coefficient (colour = 0.5 + SH_C0 * sh0)
    shN        [N, K-1, 3]  higher SH coefficients, K = (sh_degree + 1)^2 (K-1 = 0 for degree 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.errors import ConfigError, NonFiniteError

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)), as in 3DGS and gsplat
KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """[..., 3] colours in [0, 1] -> degree-0 SH coefficients."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Degree-0 SH coefficients -> [..., 3] view-independent colour (not clamped)."""
    return sh0 * SH_C0 + 0.5


def sh_degree_of(splats: torch.nn.ParameterDict) -> int:
    """The SH degree the particle stores, read from the shape of `shN`."""
    k = splats["shN"].shape[1] + 1
    degree = int(round(math.sqrt(k))) - 1
    assert num_sh_bases(degree) == k, f"shN holds {k - 1} coefficients, not (d+1)^2 - 1"
    return degree


_TRAILING = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3)}  # shN: (K - 1, 3)


def check_particle(splats) -> None:
    """Refuse, with a ConfigError naming the key, what is not a particle `render` can draw: a missing key, a
    non-tensor, mixed or non-float dtypes, shapes that disagree with `from_tensors`', or tensors on two
    devices (the Python API's users otherwise meet a dtype error from torch or a bare assertion)."""
    missing = [k for k in KEYS if k not in splats]
    if missing:
        raise ConfigError(f"a particle needs the tensors {', '.join(KEYS)}; this one lacks {', '.join(missing)} "
                          "(build one with splatdreamer.splats.from_tensors, or load one with load_ply)")  # fmt: skip
    for key in KEYS:
        value = splats[key]
        if not isinstance(value, Tensor):
            raise ConfigError(f"particle['{key}'] must be a torch tensor, got {type(value).__name__}")
        if value.dtype != splats["means"].dtype or not value.is_floating_point():
            raise ConfigError(f"particle['{key}'] is {str(value.dtype).removeprefix('torch.')} and 'means' "
                              f"{str(splats['means'].dtype).removeprefix('torch.')}; particles are float32 "
                              "(convert every tensor with .float())")  # fmt: skip
    n, device = splats["means"].shape[0] if splats["means"].ndim else -1, splats["means"].device
    for key in KEYS:
        value = splats[key]
        want = (n, *_TRAILING[key]) if key != "shN" else (n, value.shape[1] if value.ndim == 3 else -1, 3)
        if tuple(value.shape) != want or (key == "shN" and round(math.sqrt(want[1] + 1)) ** 2 != want[1] + 1):
            shape = "[N, K, 3] with K + 1 a square (SH degree 0-3)" if key == "shN" else str([n, *_TRAILING[key]])
            raise ConfigError(f"particle['{key}'] has shape {list(value.shape)}; expected {shape} "
                              f"for the {n} Gaussians of 'means' [N, 3]")  # fmt: skip
        if value.device != device:
            raise ConfigError(f"particle['{key}'] is on {value.device} and 'means' on {device}; move the whole "
                              "particle with .to(device)")  # fmt: skip


def num_gaussians(splats: torch.nn.ParameterDict) -> int:
    return splats["means"].shape[0]


def from_tensors(
    means: Tensor,  # [N, 3]
    scales: Tensor,  # [N, 3] log
    quats: Tensor,  # [N, 4] wxyz
    opacities: Tensor,  # [N] logit
    sh0: Tensor,  # [N, 1, 3]
    shN: Tensor,  # [N, K-1, 3]
) -> torch.nn.ParameterDict:
    """Wrap pre-activation tensors as a particle (copies nothing; shapes are checked)."""
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert scales.shape == (n, 3), scales.shape
    assert quats.shape == (n, 4), quats.shape
    assert opacities.shape == (n,), opacities.shape
    assert sh0.shape == (n, 1, 3), sh0.shape
    assert shN.ndim == 3 and shN.shape[0] == n and shN.shape[2] == 3, shN.shape
    tensors = dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.contiguous()) for k, v in tensors.items()})


def random_ball(
    num: int,
    radius: float = 0.5,
    init_scale: float | None = None,
    init_opacity: float = 0.1,
    sh_degree: int = 0,
    generator: torch.Generator | None = None,
    color_noise: float = 0.05,
    color: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> torch.nn.ParameterDict:
    """N Gaussians uniform in a ball: one colour (grey by default) with a little noise, random rotations.

    `init_scale=None` picks the mean spacing of N points in the ball, radius * (4/3 pi / N)^(1/3) / 2,
    so the initial blob is closed but not saturated. Opacity 0.1 and a ball of radius 0.5 follow
    DreamGaussian's text-to-3D initialisation (gs_renderer.py: 5000 points, r = 0.5, opacity 0.1).
    """
    if num <= 0:
        raise ConfigError(f"a particle needs at least one Gaussian, got num={num}")
    if radius <= 0:
        raise ConfigError(f"the initial ball radius must be positive, got {radius}")
    if not 0.0 < init_opacity < 1.0:
        raise ConfigError(f"init_opacity must lie strictly between 0 and 1, got {init_opacity}")
    if sh_degree < 0 or sh_degree > 3:
        raise ConfigError(f"sh_degree must be 0..3 (the 3DGS file layout stops at 3), got {sh_degree}")
    if init_scale is None:
        init_scale = radius * (4.0 / 3.0 * math.pi / num) ** (1.0 / 3.0) / 2.0
    if init_scale <= 0:
        raise ConfigError(f"init_scale must be positive, got {init_scale}")
    g = generator
    direction = F.normalize(torch.randn(num, 3, generator=g), dim=-1)
    r = radius * torch.rand(num, 1, generator=g) ** (1.0 / 3.0)  # uniform in volume
    means = direction * r
    scales = torch.full((num, 3), math.log(init_scale))
    quats = F.normalize(torch.randn(num, 4, generator=g), dim=-1)  # uniform random rotations
    opacities = torch.full((num,), math.log(init_opacity / (1.0 - init_opacity)))
    rgb = torch.tensor(color) + color_noise * torch.randn(num, 3, generator=g)
    sh0 = rgb_to_sh0(rgb)[:, None, :]
    shN = torch.zeros(num, num_sh_bases(sh_degree) - 1, 3)
    return from_tensors(means, scales, quats, opacities, sh0, shN)


@dataclass
class Activated:
    """Post-activation values, the inputs gsplat's `rasterization` takes."""

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4] unit wxyz
    scales: Tensor  # [N, 3] standard deviations
    opacities: Tensor  # [N] in (0, 1)
    sh: Tensor  # [N, K, 3] SH coefficients, degree-0 first


def activate(splats: torch.nn.ParameterDict) -> Activated:
    """Apply the activations; differentiable."""
    return Activated(
        means=splats["means"],
        quats=F.normalize(splats["quats"], dim=-1),
        scales=torch.exp(splats["scales"]),
        opacities=torch.sigmoid(splats["opacities"]),
        sh=torch.cat([splats["sh0"], splats["shN"]], dim=1),
    )


def all_finite(splats: torch.nn.ParameterDict) -> Tensor:
    """A 0-dim bool tensor on the particle's device: no parameter holds a NaN or Inf. Reading it synchronises,
    so a caller can batch it with other values; `check_finite` says which parameter is bad."""
    return torch.stack([torch.isfinite(splats[key]).all() for key in KEYS]).all()


def check_finite(splats: torch.nn.ParameterDict, what: str = "particle") -> None:
    """Raise `NonFiniteError` naming the first parameter that holds a NaN or Inf."""
    for key in KEYS:
        value = splats[key]
        if not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).sum().item()
            raise NonFiniteError(
                f"{what}: {bad} Gaussians have a NaN or Inf in '{key}'. The optimisation diverged; "
                "lower the learning rates or the guidance scale, or resume from an earlier checkpoint."
            )


def detached_copy(splats: torch.nn.ParameterDict) -> torch.nn.ParameterDict:
    """A new particle with the same values and no shared storage."""
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().clone(), requires_grad=v.requires_grad) for k, v in splats.items()}
    )
