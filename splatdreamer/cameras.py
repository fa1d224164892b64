"""Orbit cameras around the origin, in gsplat's conventions.

World frame (the 3DGS/COLMAP file convention, so `.ply` files need no rotation on export):
+X right, -Y up, +Z pointing away from the front camera. A camera at elevation e, azimuth a and
radius r sits at

    position = r * (cos e * sin a, -sin e, -cos e * cos a)

so azimuth 0 / elevation 0 looks at the object's front along +Z with an identity rotation, positive
elevation looks down from above, and azimuth grows towards +X (the object's right side).
Camera axes are OpenCV's (x right, y down, z forward); `viewmats` are world-to-camera; `Ks` are in
pixels with pixel centres at +0.5 (`cx = W / 2` is the image centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.errors import ConfigError

WORLD_UP = (0.0, -1.0, 0.0)
VIEW_LABELS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor  # [C, 3, 3] intrinsics in pixels
    width: int
    height: int
    elevation: Tensor  # [C] degrees, positive = above
    azimuth: Tensor  # [C] degrees in [0, 360), 0 = front
    radius: Tensor  # [C] distance to the origin
    fovy: Tensor  # [C] vertical field of view, degrees

    def __post_init__(self) -> None:
        c = self.viewmats.shape[0]
        assert self.viewmats.shape == (c, 4, 4), self.viewmats.shape
        assert self.Ks.shape == (c, 3, 3), self.Ks.shape
        for name in ("elevation", "azimuth", "radius", "fovy"):
            assert getattr(self, name).shape == (c,), (name, getattr(self, name).shape)

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(
            self.viewmats[index], self.Ks[index], self.width, self.height,
            self.elevation[index], self.azimuth[index], self.radius[index], self.fovy[index],
        )  # fmt: skip

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
            self.elevation.to(device), self.azimuth.to(device), self.radius.to(device), self.fovy.to(device),
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def camtoworlds(self) -> Tensor:
        """[C, 4, 4] camera-to-world matrices (OpenCV axes)."""
        return torch.linalg.inv(self.viewmats)

    @property
    def positions(self) -> Tensor:
        """[C, 3] camera centres in world space."""
        return self.camtoworlds[:, :3, 3]

    def condition(self) -> Tensor:
        """[C, 16] the camera condition of eps_phi: the flattened 4x4 camera-to-world matrix.

        ProlificDreamer feeds exactly this (nerf/provider.py, `poses.view(B, 16)`) through an MLP into
        the UNet's time embedding.
        """
        return self.camtoworlds.reshape(len(self), 16)

    def view_labels(self) -> list[str]:
        """One of front / side / back / overhead per camera, for view-dependent prompts.

        Bins of the official code (nerf/provider.py `get_view_direction`): overhead when the polar angle
        is <= 30 degrees (elevation >= 60), front within 30 degrees of azimuth 0, back within 30 of 180,
        side otherwise.
        """
        labels = []
        for elev, azim in zip(self.elevation.tolist(), self.azimuth.tolist()):
            a = azim % 360.0
            if elev >= 60.0:
                labels.append("overhead")
            elif a < 30.0 or a >= 330.0:
                labels.append("front")
            elif 150.0 <= a < 210.0:
                labels.append("back")
            else:
                labels.append("side")
        return labels

    @staticmethod
    def cat(cameras: list["Cameras"]) -> "Cameras":
        first = cameras[0]
        assert all(c.width == first.width and c.height == first.height for c in cameras)
        return Cameras(
            torch.cat([c.viewmats for c in cameras]), torch.cat([c.Ks for c in cameras]), first.width, first.height,
            torch.cat([c.elevation for c in cameras]), torch.cat([c.azimuth for c in cameras]),
            torch.cat([c.radius for c in cameras]), torch.cat([c.fovy for c in cameras]),
        )  # fmt: skip


def orbit_positions(elevation: Tensor, azimuth: Tensor, radius: Tensor) -> Tensor:
    """[C] degrees, degrees, distance -> [C, 3] camera centres (see the module docstring)."""
    e = torch.deg2rad(elevation)
    a = torch.deg2rad(azimuth)
    return radius[:, None] * torch.stack(
        [torch.cos(e) * torch.sin(a), -torch.sin(e), -torch.cos(e) * torch.cos(a)], dim=-1
    )


def look_at(positions: Tensor, target: Tensor | None = None) -> Tensor:
    """[C, 3] camera centres -> [C, 4, 4] world-to-camera matrices looking at `target` (origin).

    The camera's y axis (down on screen) is aligned with world down (+Y) as far as possible; for a
    camera straight above or below, the world's -Z breaks the tie (continuous with cameras just off the pole at azimuth 0) so the matrix stays defined.
    """
    if target is None:
        target = torch.zeros(3, dtype=positions.dtype, device=positions.device)
    forward = F.normalize(target - positions, dim=-1)  # camera z
    down = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
    right = torch.linalg.cross(down, forward)  # camera x = y cross z
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 0.0, -1.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
        right = torch.where(degenerate[:, None], torch.linalg.cross(alt, forward), right)
    right = F.normalize(right, dim=-1)
    cam_down = torch.linalg.cross(forward, right)  # y = z cross x
    c2w = torch.eye(4, dtype=positions.dtype, device=positions.device).repeat(len(positions), 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = positions
    return torch.linalg.inv(c2w)


def intrinsics(fovy: Tensor, width: int, height: int) -> Tensor:
    """[C] vertical FOV in degrees -> [C, 3, 3] pixel intrinsics with square pixels, centred."""
    f = 0.5 * height / torch.tan(torch.deg2rad(fovy) / 2.0)
    K = torch.zeros(len(fovy), 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = width / 2.0
    K[:, 1, 2] = height / 2.0
    K[:, 2, 2] = 1.0
    return K


def orbit(
    elevation: Tensor, azimuth: Tensor, radius: Tensor, fovy: Tensor, width: int, height: int
) -> Cameras:
    """Cameras on an orbit from per-camera [C] elevation, azimuth (degrees), radius and FOV (degrees)."""
    if width <= 0 or height <= 0:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    azimuth = azimuth % 360.0
    return Cameras(
        viewmats=look_at(orbit_positions(elevation, azimuth, radius)),
        Ks=intrinsics(fovy, width, height),
        width=width,
        height=height,
        elevation=elevation,
        azimuth=azimuth,
        radius=radius,
        fovy=fovy,
    )


@dataclass(frozen=True)
class CameraRanges:
    """Ranges cameras are drawn from; all uniform. See `config.CameraConfig` for the defaults' sources."""

    radius: tuple[float, float]
    elevation: tuple[float, float]
    azimuth: tuple[float, float]
    fovy: tuple[float, float]

    def __post_init__(self) -> None:
        for name in ("radius", "elevation", "azimuth", "fovy"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"camera {name} range is empty: ({lo}, {hi}); give (low, high)")
        if self.radius[0] <= 0:
            raise ConfigError(f"camera radius must be positive, got {self.radius}")
        if not (0 < self.fovy[0] and self.fovy[1] < 180):
            raise ConfigError(f"camera fovy must lie in (0, 180) degrees, got {self.fovy}")
        if self.elevation[0] < -90 or self.elevation[1] > 90:
            raise ConfigError(f"camera elevation must lie in [-90, 90] degrees, got {self.elevation}")


# Framing for objects of radius ~0.5 at the origin (the toy world and the initial ball): the object
# fills 55-85 % of the frame height. The official code uses radius [1.0, 1.5] and fovy [40, 70] for its
# NeRF bound; elevation [-10, 45] is threestudio's configs/prolificdreamer.yaml.
DEFAULT_RANGES = CameraRanges(radius=(1.6, 2.0), elevation=(-10.0, 45.0), azimuth=(-180.0, 180.0), fovy=(40.0, 50.0))


def sample(
    num: int, ranges: CameraRanges, width: int, height: int, generator: torch.Generator | None = None
) -> Cameras:
    """Draw `num` random orbit cameras, each quantity uniform in its range."""

    def uniform(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(num, generator=generator)

    return orbit(
        uniform(ranges.elevation), uniform(ranges.azimuth), uniform(ranges.radius), uniform(ranges.fovy),
        width, height,
    )  # fmt: skip


def turntable(
    num: int, width: int, height: int, elevation: float = 15.0, radius: float = 1.8, fovy: float = 45.0
) -> Cameras:
    """`num` cameras evenly spaced in azimuth, starting at the front, at one elevation."""
    if num < 1:
        raise ConfigError(f"a turntable needs one or more cameras, got num={num!r}")
    azimuth = torch.arange(num, dtype=torch.float32) * (360.0 / num)
    full = lambda v: torch.full((num,), float(v))  # noqa: E731
    return orbit(full(elevation), azimuth, full(radius), full(fovy), width, height)


def evaluation_views(width: int, height: int, radius: float = 1.8, fovy: float = 45.0) -> Cameras:
    """The fixed views results are measured from: 8 azimuths at elevation 15 plus 4 at elevation 45."""
    low = turntable(8, width, height, elevation=15.0, radius=radius, fovy=fovy)
    high = turntable(4, width, height, elevation=45.0, radius=radius, fovy=fovy)
    high.azimuth = (high.azimuth + 45.0) % 360.0
    high = orbit(high.elevation, high.azimuth, high.radius, high.fovy, width, height)
    return Cameras.cat([low, high])


def fov_to_focal(fov_degrees: float, size: int) -> float:
    return 0.5 * size / math.tan(math.radians(fov_degrees) / 2.0)
