import math

import pytest
import torch

from splatdreamer import cameras as C
from splatdreamer.errors import ConfigError


def project(cams: C.Cameras, point: list[float]) -> torch.Tensor:
    """[C, 2] pixel coordinates of a world point (pinhole, OpenCV axes)."""
    p = torch.tensor(point + [1.0])
    cam = (cams.viewmats @ p)[:, :3]
    uv = (cams.Ks @ (cam / cam[:, 2:3]).unsqueeze(-1)).squeeze(-1)
    return uv[:, :2]


def test_front_camera_is_identity_rotation_looking_along_plus_z():
    cams = C.orbit(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([45.0]), 64, 64)
    expected = torch.eye(4)
    expected[2, 3] = 2.0
    torch.testing.assert_close(cams.viewmats[0], expected)
    torch.testing.assert_close(cams.positions[0], torch.tensor([0.0, 0.0, -2.0]))


def test_origin_projects_to_image_centre_and_up_is_minus_y():
    cams = C.turntable(8, 64, 48, elevation=20.0, radius=2.0, fovy=40.0)
    torch.testing.assert_close(project(cams, [0.0, 0.0, 0.0]), torch.tensor([[32.0, 24.0]]).expand(8, 2))
    above = project(cams, [0.0, -0.3, 0.0])  # world up is -Y: appears above the centre in every view
    assert (above[:, 1] < 24.0).all()


def test_known_point_lands_on_expected_pixel():
    # Front camera at distance 2, fovy 90 deg on a 100 px image: f = 50 px.
    cams = C.orbit(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([90.0]), 100, 100)
    assert cams.Ks[0, 0, 0].item() == pytest.approx(50.0)
    # A point 0.5 to the right (+X) and at the origin's depth: u = 50 + 50 * 0.5 / 2 = 62.5
    torch.testing.assert_close(project(cams, [0.5, 0.0, 0.0]), torch.tensor([[62.5, 50.0]]))


def test_side_camera_sees_plus_x_face():
    cams = C.orbit(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([2.0]), torch.tensor([45.0]), 32, 32)
    torch.testing.assert_close(cams.positions[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    # Looking at the origin from +X: the front of the object (-Z) appears on the left.
    assert project(cams, [0.0, 0.0, -0.3])[0, 0] < 16.0


def test_overhead_pole_is_well_defined_and_continuous():
    elev = torch.tensor([90.0, 89.9])
    cams = C.orbit(elev, torch.zeros(2), torch.full((2,), 2.0), torch.full((2,), 45.0), 32, 32)
    assert torch.isfinite(cams.viewmats).all()
    rot = cams.viewmats[:, :3, :3]
    torch.testing.assert_close(rot[0] @ rot[0].T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(rot[0], rot[1], atol=1e-2, rtol=0)


def test_view_labels_follow_official_bins():
    elev = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 70.0])
    azim = torch.tensor([10.0, 340.0, 90.0, 180.0, 250.0, 180.0])
    cams = C.orbit(elev, azim, torch.full((6,), 2.0), torch.full((6,), 45.0), 8, 8)
    assert cams.view_labels() == ["front", "front", "side", "back", "side", "overhead"]


def test_condition_is_flattened_camera_to_world():
    cams = C.sample(3, C.DEFAULT_RANGES, 16, 16, torch.Generator().manual_seed(0))
    cond = cams.condition()
    assert cond.shape == (3, 16)
    torch.testing.assert_close(cond.reshape(3, 4, 4)[:, :3, 3], cams.positions)
    torch.testing.assert_close(cond.reshape(3, 4, 4)[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))


def test_sampling_respects_ranges_and_seed():
    ranges = C.CameraRanges(radius=(1.5, 2.5), elevation=(-10, 45), azimuth=(-180, 180), fovy=(40, 50))
    a = C.sample(500, ranges, 32, 32, torch.Generator().manual_seed(1))
    b = C.sample(500, ranges, 32, 32, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.viewmats, b.viewmats)
    assert a.radius.min() >= 1.5 and a.radius.max() <= 2.5
    assert a.elevation.min() >= -10 and a.elevation.max() <= 45
    torch.testing.assert_close(a.positions.norm(dim=-1), a.radius)
    # Elevation is the angle above the horizon (world up = -Y).
    torch.testing.assert_close(torch.rad2deg(torch.asin(-a.positions[:, 1] / a.radius)), a.elevation, atol=1e-3, rtol=0)
    focal = 0.5 * 32 / torch.tan(torch.deg2rad(a.fovy) / 2)
    torch.testing.assert_close(a.Ks[:, 1, 1], focal)


def test_bad_ranges_are_config_errors():
    with pytest.raises(ConfigError, match="radius"):
        C.CameraRanges(radius=(2.0, 1.0), elevation=(0, 1), azimuth=(0, 1), fovy=(40, 50))
    with pytest.raises(ConfigError, match="fovy"):
        C.CameraRanges(radius=(1.0, 2.0), elevation=(0, 1), azimuth=(0, 1), fovy=(40, 190))
    with pytest.raises(ConfigError, match="image size"):
        C.turntable(4, 0, 32)


def test_evaluation_views_fixed_and_distinct():
    views = C.evaluation_views(32, 32)
    assert len(views) == 12
    pos = views.positions
    assert torch.cdist(pos, pos).add(torch.eye(12) * 10).min() > 0.1
    assert math.isclose(views.elevation[-1].item(), 45.0)
