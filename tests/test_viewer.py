"""The web viewer: what it hands viser, and `splatdreamer view` screenshotted in a real headless Chromium."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splatdreamer.errors import ConfigError
from splatdreamer.io.ply import save_ply
from splatdreamer.splats import detached_copy, from_tensors, rgb_to_sh0
from splatdreamer.toy.objects import PALETTE, variants
from splatdreamer.viewer import LiveViewer, _snapshot, particle_files, splat_arrays

REPO = Path(__file__).resolve().parents[1]


def test_splat_arrays_activate_a_rotated_gaussian():
    half = math.sqrt(0.5)
    splats = from_tensors(
        means=torch.tensor([[0.1, -0.2, 0.3]]),
        scales=torch.log(torch.tensor([[0.1, 0.2, 0.3]])),
        quats=torch.tensor([[2 * half, 0.0, 0.0, 2 * half]]),  # 90 degrees about z, unnormalised (length 2)
        opacities=torch.tensor([0.0]),
        sh0=rgb_to_sh0(torch.tensor([[[1.0, 0.0, 0.25]]])),
        shN=torch.zeros(1, 0, 3),
    )
    a = splat_arrays(splats)
    np.testing.assert_allclose(a.centers, [[0.1, -0.2, 0.3]], atol=1e-7)
    # x and y swap under the rotation: variances (0.2^2, 0.1^2, 0.3^2) on the diagonal.
    np.testing.assert_allclose(a.covariances[0], np.diag([0.04, 0.01, 0.09]), atol=1e-7)
    np.testing.assert_allclose(a.rgbs, [[1.0, 0.0, 0.25]], atol=1e-6)
    np.testing.assert_allclose(a.opacities, [[0.5]])


def test_splat_arrays_leave_out_non_finite_gaussians():
    splats = detached_copy(variants("a red ball")[0].splats)  # variants() caches its objects
    n = splats["means"].shape[0]
    with torch.no_grad():
        splats["means"][0, 1] = float("nan")
        splats["scales"][1, 0] = float("inf")
    a = splat_arrays(splats)
    assert a.centers.shape == (n - 2, 3) and a.covariances.shape == (n - 2, 3, 3) and a.opacities.shape == (n - 2, 1)
    assert np.isfinite(a.covariances).all()
    np.testing.assert_allclose(a.rgbs.mean(0), PALETTE["red"], atol=1e-4)


def test_particle_files_of_a_run_folder_are_in_particle_order(tmp_path):
    for k in (10, 2, 0, 1):
        (tmp_path / f"particle_{k}.ply").touch()
    (tmp_path / "particle_0.compressed.ply").touch()
    assert [p.name for p in particle_files(tmp_path)] == [f"particle_{k}.ply" for k in (0, 1, 2, 10)]
    assert particle_files(tmp_path / "particle_2.ply") == [tmp_path / "particle_2.ply"]
    with pytest.raises(ConfigError, match="does not exist"):
        particle_files(tmp_path / "missing.ply")
    (tmp_path / "previews").mkdir()
    with pytest.raises(ConfigError, match="no particle_K.ply"):
        particle_files(tmp_path / "previews")


def test_live_viewer_follows_a_run_through_the_callback(tmp_path):
    from splatdreamer.generate import generate
    from splatdreamer.splats import num_gaussians
    from tiny_models import build_tiny_sd
    from test_generate import tiny_config

    config = tiny_config(build_tiny_sd(tmp_path / "prior", sample_size=16), tmp_path / "run", steps=9)
    seen = []
    with LiveViewer(port=8312, every=4) as live:
        result = generate(config, callback=lambda p: (seen.append(_snapshot(p.particles[0])["means"]), live(p)))
        live.finish()
        assert live.updates == 4  # the first step, steps 4 and 8, and the last (9)
        counts = [num_gaussians(p) for p in result.particles]
        assert "step 9 / 9" in live.viewer.status.content
        assert f"Gaussians: {counts[0]} / {counts[1]}" in live.viewer.status.content
        for k, line in enumerate(live.viewer.facts):
            assert line == f"| particle_{k} | {counts[k]} |"  # the last step's particles were drawn
    assert not torch.equal(seen[0], seen[-1])  # the callback saw the particles move


# ---------------------------------------------------------------- in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 720  # wide, so the floating control panel (right) leaves the centre of the canvas free


def _screenshot(ply: Path, out: Path) -> np.ndarray:
    """Run `splatdreamer view PLY` on a loopback port, screenshot its page with headless Chromium, stop both."""
    if CHROMIUM is None:
        if os.environ.get("SPLATDREAMER_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed, and SPLATDREAMER_REQUIRE_BROWSER is set (CI: see .ci/run)")
        pytest.skip("needs a headless Chromium (apt-get install chromium)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "splatdreamer.cli", "view", str(ply), "--port", "8311"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        for line in server.stdout:
            if m := re.search(r"viewer at (http://\S+)", line):
                url = m.group(1)
                break
        else:
            pytest.fail(f"splatdreamer view exited ({server.wait()}) without printing its address")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [CHROMIUM, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=20000",
                 f"--screenshot={out}", url],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        server.wait(timeout=30)
    assert server.returncode == 0, server.stdout.read()  # Ctrl-C stops the viewer cleanly
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _mask(image: np.ndarray, rgb: tuple[float, float, float], tolerance: int = 60) -> np.ndarray:
    """[H, W] bool: pixels near the colour (splats blend toward the background at their rims)."""
    return np.abs(image - np.array(rgb) * 255).max(-1) < tolerance


@pytest.mark.slow
def test_view_shows_the_red_ball_red_in_the_middle(tmp_path):
    ply = tmp_path / "ball.ply"
    save_ply(variants("a red ball")[0].splats, ply)
    image = _screenshot(ply, tmp_path / "ball.png")
    red = _mask(image, PALETTE["red"])
    cy, cx = HEIGHT // 2, WIDTH // 2
    assert red[cy - 20 : cy + 20, cx - 20 : cx + 20].all()  # the ball fills the middle
    ys, xs = np.nonzero(red)
    assert abs(ys.mean() - cy) < 0.05 * HEIGHT and abs(xs.mean() - cx) < 0.05 * WIDTH  # centred
    assert 0.02 < red.mean() < 0.5  # a ball, not a red page
    assert not red[HEIGHT // 4 : -HEIGHT // 4, : WIDTH // 4].any()  # background beside it (not the axes icon)


@pytest.mark.slow
def test_view_shows_the_cone_upright(tmp_path):
    ply = tmp_path / "cone.ply"
    save_ply(variants("a green cone")[0].splats, ply)
    image = _screenshot(ply, tmp_path / "cone.png")
    green = _mask(image, PALETTE["green"])[:, WIDTH // 4 : WIDTH // 2 + WIDTH // 5]  # not the icons
    rows = np.nonzero(green.any(1))[0]
    assert len(rows) > 0.1 * HEIGHT, "no cone on the page"
    top, bottom = rows.min(), rows.max()
    band = (bottom - top) // 5
    width_near_top = green[top : top + band].sum(1).mean()
    width_near_bottom = green[bottom - band : bottom + 1].sum(1).mean()
    # The apex (y = -0.45, up is -Y) is above the base: the silhouette narrows toward the top of the image.
    assert width_near_top < 0.5 * width_near_bottom
    assert green[(top + bottom) // 2, WIDTH // 4] and abs((top + bottom) / 2 - HEIGHT / 2) < 0.1 * HEIGHT  # centred
