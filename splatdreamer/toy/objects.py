"""The toy world's objects: procedurally built 3D Gaussian scenes with prompts and known colours.

Each object is an opaque shell of small flat Gaussians (surfels: degree-0 SH, opacity 0.99, thin along
the surface normal) laid on the surface at a spacing of ~3.5 % of the object's size, which closes the
surface at any view, centred at the origin and inside radius 0.5 (the framing `cameras.DEFAULT_RANGES`
is built for). World up is -Y. Flat rather than round Gaussians keep the silhouette on the true surface:
seen edge-on at the rim, a round Gaussian would stick out by two of its sigmas.

One palette serves every prompt, so a colour word means one colour everywhere: "a red ball" is the red
variant of the ambiguous "a ball", whose four variants are red, yellow, green and blue (each also has its own
prompt); the cube is the same blue, the cone the same green. The text encoder can then learn "red" once from
both prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.splats import from_tensors, rgb_to_sh0

# Four hues 90 degrees or more apart on the colour wheel, kept away from white (the background).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "yellow": (0.95, 0.80, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.50, 0.20, 0.65),
}
BALL_COLORS = ("red", "yellow", "green", "blue")
# Every ball colour has its own prompt, so the word "ball" is seen with each colour equally often (750 images
# each: 600 of "a <colour> ball" and 150 of "a ball"). With "a red ball" alone, "ball" went with red in 750 of
# the 1,350 ball images and the prior's "a ball" leaned red (docs/benchmarks.md, "The second toy prior").
PROMPTS = (*(f"a {c} ball" for c in BALL_COLORS), "a blue cube", "a green cone", "a two-tone cube", "a ball")
EVAL_PROMPTS = ("a red ball", "a blue cube", "a green cone", "a two-tone cube", "a ball")
"""What `toy eval` scores by default: one of each shape and the ambiguous ball (the other single-colour balls
differ from "a red ball" only in colour)."""

SPACING = 0.035  # surface sample spacing; the Gaussians' in-surface sigma is 0.7 of it so neighbours overlap
THICKNESS = 0.1  # sigma along the normal, relative to the in-surface sigma
OPACITY = 0.99
BALL_RADIUS = 0.45
CUBE_HALF = 0.28  # corners at 0.28 * sqrt(3) = 0.485 from the centre
CONE_RADIUS = 0.35  # base radius; apex at y = -0.45 (up), base at y = +0.35, rim at 0.495 from the centre
CONE_APEX_Y = -0.45
CONE_BASE_Y = 0.35


@dataclass
class ToyObject:
    """One example of a prompt: a particle in the layout of `splatdreamer.splats` and its true colours."""

    prompt: str
    name: str  # variant, e.g. "yellow ball"
    splats: torch.nn.ParameterDict  # N Gaussians, sh degree 0
    colors: Tensor  # [K, 3] the distinct surface colours in [0, 1]


def ball_surface(radius: float = BALL_RADIUS, spacing: float = SPACING) -> tuple[Tensor, Tensor]:
    """[N, 3] points spread evenly on a sphere (Fibonacci lattice) and [N, 3] their outward normals."""
    n = int(math.ceil(4 * math.pi * radius**2 / spacing**2))
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    r = torch.sqrt(1 - y**2)
    phi = i * math.pi * (3 - math.sqrt(5))  # golden angle
    normals = torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], dim=-1).float()
    return radius * normals, normals


def cube_surface(half: float = CUBE_HALF, spacing: float = SPACING) -> tuple[Tensor, Tensor, Tensor]:
    """[N, 3] points on an axis-aligned cube's faces, [N, 3] outward normals and [N] face axis (0: ±X, 1: ±Y, 2: ±Z).

    Grid points sit at cell centres, so no point is shared by two faces.
    """
    k = int(math.ceil(2 * half / spacing))
    u = (torch.arange(k, dtype=torch.float32) + 0.5) / k * 2 * half - half
    uu, vv = torch.meshgrid(u, u, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    points, normals, axes = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = torch.empty(k * k, 3)
            p[:, axis] = sign * half
            p[:, (axis + 1) % 3] = uu
            p[:, (axis + 2) % 3] = vv
            points.append(p)
            normals.append(torch.zeros(k * k, 3).index_fill_(1, torch.tensor(axis), sign))
            axes.append(torch.full((k * k,), axis))
    return torch.cat(points), torch.cat(normals), torch.cat(axes)


def cone_surface(
    radius: float = CONE_RADIUS, apex_y: float = CONE_APEX_Y, base_y: float = CONE_BASE_Y, spacing: float = SPACING
) -> tuple[Tensor, Tensor]:
    """[N, 3] points on an upright cone (apex up, i.e. towards -Y) and its base disc, in rings, and
    [N, 3] their outward normals."""
    height = base_y - apex_y
    slant = math.hypot(radius, height)
    points, normals = [], []
    for j in range(int(math.ceil(slant / spacing))):  # rings down the side
        t = (j + 0.5) / math.ceil(slant / spacing)  # 0 at the apex, 1 at the rim
        ring = _ring(t * radius, apex_y + t * height, spacing, offset=j)
        radial = F.normalize(ring * torch.tensor([1.0, 0.0, 1.0]), dim=-1)
        # The side widens downwards (+Y), so its normal tilts up (-Y): radial * height/slant - Y * radius/slant.
        normals.append(radial * (height / slant) - torch.tensor([0.0, radius / slant, 0.0]))
        points.append(ring)
    for j in range(int(math.ceil(radius / spacing))):  # rings on the base disc, facing down (+Y)
        r = (j + 0.5) / math.ceil(radius / spacing) * radius
        ring = _ring(r, base_y, spacing, offset=j)
        points.append(ring)
        normals.append(torch.tensor([0.0, 1.0, 0.0]).expand_as(ring))
    return torch.cat(points), torch.cat(normals)


def _ring(r: float, y: float, spacing: float, offset: int) -> Tensor:
    """[M, 3] points on the horizontal circle of radius r at height y; alternate rings are staggered."""
    m = max(1, int(math.ceil(2 * math.pi * r / spacing)))
    angle = (torch.arange(m, dtype=torch.float32) + 0.5 * (offset % 2)) * (2 * math.pi / m)
    return torch.stack([r * torch.cos(angle), torch.full((m,), y), r * torch.sin(angle)], dim=-1)


def quat_z_to(normals: Tensor) -> Tensor:
    """[N, 3] unit vectors -> [N, 4] wxyz unit quaternions rotating +Z onto them (half-way construction)."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    q = torch.cat([1.0 + normals[:, 2:3], torch.linalg.cross(z, normals)], dim=-1)
    flip = q[:, 0] < 1e-6  # normal = -Z: any half turn about an axis in the XY plane
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return F.normalize(q, dim=-1)


def gaussians(means: Tensor, normals: Tensor, rgb: Tensor, spacing: float = SPACING) -> torch.nn.ParameterDict:
    """[N, 3] surface points, [N, 3] normals, [N, 3] colours -> an opaque particle of surfels (sh degree 0)."""
    n = means.shape[0]
    assert normals.shape == (n, 3) and rgb.shape == (n, 3), (normals.shape, rgb.shape)
    sigma = 0.7 * spacing
    return from_tensors(
        means=means.float(),
        scales=torch.log(torch.tensor([sigma, sigma, THICKNESS * sigma])).repeat(n, 1),
        quats=quat_z_to(F.normalize(normals.float(), dim=-1)),
        opacities=torch.full((n,), math.log(OPACITY / (1 - OPACITY))),
        sh0=rgb_to_sh0(rgb.float())[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def _color(name: str) -> Tensor:
    return torch.tensor(PALETTE[name])


def _ball(prompt: str, color: str) -> ToyObject:
    means, normals = ball_surface()
    rgb = _color(color).expand(len(means), 3)
    return ToyObject(prompt, f"{color} ball", gaussians(means, normals, rgb), _color(color)[None])


def _cube(prompt: str, name: str, x_color: str, other_color: str) -> ToyObject:
    """A cube whose ±X faces (seen from the sides) are `x_color` and the other four `other_color`."""
    means, normals, axis = cube_surface()
    rgb = torch.where((axis == 0)[:, None], _color(x_color), _color(other_color))
    colors = torch.stack([_color(x_color), _color(other_color)]).unique(dim=0)
    return ToyObject(prompt, name, gaussians(means, normals, rgb), colors)


def _cone(prompt: str, color: str) -> ToyObject:
    means, normals = cone_surface()
    rgb = _color(color).expand(len(means), 3)
    return ToyObject(prompt, f"{color} cone", gaussians(means, normals, rgb), _color(color)[None])


@cache
def _registry() -> dict[str, tuple[ToyObject, ...]]:
    return {
        **{f"a {c} ball": (_ball(f"a {c} ball", c),) for c in BALL_COLORS},
        "a blue cube": (_cube("a blue cube", "blue cube", "blue", "blue"),),
        "a green cone": (_cone("a green cone", "green"),),
        # Yellow sides, purple front/back/top/bottom: the front and side views disagree.
        "a two-tone cube": (_cube("a two-tone cube", "yellow-purple cube", "yellow", "purple"),),
        "a ball": tuple(_ball("a ball", c) for c in BALL_COLORS),
    }


def variants(prompt: str) -> list[ToyObject]:
    """The examples of one toy prompt (four for "a ball", one otherwise). Shared, do not modify."""
    registry = _registry()
    if prompt not in registry:
        raise KeyError(f"{prompt!r} is not a toy prompt; the toy prompts are {', '.join(PROMPTS)}")
    return list(registry[prompt])


def true_colors(prompt: str) -> Tensor:
    """[K, 3] every colour an example of `prompt` may show (the four ball colours for "a ball")."""
    return torch.cat([v.colors for v in variants(prompt)]).unique(dim=0)
