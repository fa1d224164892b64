"""The web viewer: what it hands viser, and `splatdreamer view` screenshotted in a real headless Chromium."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splatdreamer.errors import ConfigError
from splatdreamer.io.ply import save_ply
from splatdreamer.splats import detached_copy, from_tensors, rgb_to_sh0
from splatdreamer.toy.objects import PALETTE, variants
from browser import require_chromium, settled_screenshot
from splatdreamer.viewer import ALL, LiveViewer, _snapshot, particle_files, splat_arrays, view

REPO = Path(__file__).resolve().parents[1]


def _default_sigint() -> None:
    """Ctrl-C must reach the child even when pytest runs as a background job, whose shell ignores SIGINT (an
    ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_particle_without_gaussians_is_drawn_empty_and_a_file_without_any_is_refused(tmp_path):
    """Found by a hostile-input pass: `view` of a valid 0-vertex .ply crashed in splat_arrays' reshape."""
    ball = variants("a red ball")[0].splats
    empty = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach()[:0].clone()) for k, v in ball.items()})
    arrays = splat_arrays(empty)
    assert arrays.centers.shape == (0, 3) and arrays.covariances.shape == (0, 3, 3) and arrays.opacities.shape == (0, 1)
    save_ply(empty, tmp_path / "zero.ply")
    with pytest.raises(ConfigError, match=r"zero.ply holds no Gaussians \(its vertex count is 0\)"):
        view(tmp_path / "zero.ply", port=0)


@pytest.mark.parametrize("host", ["999.1.1.1", "8.8.8.8"])
def test_a_host_this_machine_cannot_listen_on_is_refused_at_once(tmp_path, host):
    """Found by a hostile-input pass: viser retries the next port on any OSError, so `view --host 999.1.1.1`
    hung without a word."""
    red_ball_ply = tmp_path / "ball.ply"
    save_ply(variants("a red ball")[0].splats, red_ball_ply)
    with pytest.raises(ConfigError, match=f"cannot listen on host '{host}'.*give an address of this machine"):
        view(red_ball_ply, host=host, port=8123)


@pytest.mark.parametrize("host, every_interface", [("", True), ("0.0.0.0", True), ("127.0.0.1", False)])
def test_view_says_when_it_listens_on_every_interface(tmp_path, capsys, monkeypatch, host, every_interface):
    """Found by a hostile-input pass: `view --host ''` listened on every interface and printed only a localhost URL."""
    import types

    from splatdreamer import cli

    class Interrupted:
        def wait(self):
            raise KeyboardInterrupt  # Ctrl-C as soon as the address is printed

    monkeypatch.setattr(cli, "threading", types.SimpleNamespace(Event=Interrupted))
    ball = tmp_path / "ball.ply"
    save_ply(variants("a red ball")[0].splats, ball)
    assert cli.main(["view", str(ball), "--host", host, "--port", "8316"]) == 0
    out = capsys.readouterr().out  # viser's own panel comes first
    url = re.search(r"^splatdreamer: viewer at (http://localhost:(\d+)) \(Ctrl-C to stop\)(.*)$", out, re.MULTILINE)
    assert url is not None, out
    note = (f"; it listens on every network interface, so other machines can open it too, at this machine's address "
            f"and port {url.group(2)}")  # fmt: skip
    assert url.group(3) == (note if every_interface else "")


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
    exported = tmp_path / "exported"  # a run written with --output.formats splat only (a hostile-input pass)
    exported.mkdir()
    for name in ("particle_0.splat", "particle_1.splat", "particle_0.png"):
        (exported / name).touch()
    with pytest.raises(ConfigError, match=r"only exports that splatdreamer cannot read back \(particle_0.splat, "
                                          r"particle_1.splat\).*--output.formats ply splat"):
        particle_files(exported)


def _run_folder(folder: Path) -> Path:
    """A run folder whose particle_0 is the red ball and particle_1 the green cone."""
    folder.mkdir()
    save_ply(variants("a red ball")[0].splats, folder / "particle_0.ply")
    save_ply(variants("a green cone")[0].splats, folder / "particle_1.ply")
    return folder


def test_view_of_a_run_folder_lays_particles_out_and_selects_one(tmp_path):
    viewer = view(_run_folder(tmp_path / "run"), port=8314)
    try:
        assert viewer.facts == ["| particle_0.ply | 2078 | 0 |", "| particle_1.ply | 1116 | 0 |"]
        ball, cone = viewer.handles[0], viewer.handles[1]
        assert viewer.spacing == pytest.approx(2.4 * 0.45, rel=1e-3)  # the larger extent, with a gap
        assert ball.position[0] == pytest.approx(-viewer.spacing / 2) and cone.position[0] == -ball.position[0]
        assert ball.visible and cone.visible
        viewer.selector.value = "particle_1.ply"  # what a click in the page does
        assert not ball.visible and cone.visible and tuple(cone.position) == (0.0, 0.0, 0.0)
        viewer.selector.value = ALL
        assert ball.visible and cone.position[0] == pytest.approx(viewer.spacing / 2)
    finally:
        viewer.close()


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
WIDTH, HEIGHT = 1280, 720  # wide, so the floating control panel (right) leaves the centre of the canvas free


def _shows_something(image: np.ndarray) -> bool:
    """Non-white pixels in the middle of the canvas (away from the panel, the notice and the axes icon)."""
    middle = image[HEIGHT // 4 : -HEIGHT // 4, WIDTH // 4 : WIDTH // 2 + WIDTH // 5].astype(int)
    return (middle.min(-1) < 200).mean() > 0.005


def _screenshot(path: Path, out: Path) -> np.ndarray:
    """Run `splatdreamer view PATH` on a loopback port, screenshot its page in headless Chromium once the scene
    has settled, stop both; the picture is also saved to `out` (to look at when a test fails)."""
    require_chromium(pytest)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "splatdreamer.cli", "view", str(path), "--port", "8311"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        for line in server.stdout:
            if m := re.search(r"viewer at (http://\S+)", line):
                url = m.group(1)
                break
        else:
            pytest.fail(f"splatdreamer view exited ({server.wait()}) without printing its address")
        image = settled_screenshot(url, WIDTH, HEIGHT, _shows_something)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        server.wait(timeout=30)
    assert server.returncode == 0, server.stdout.read()  # Ctrl-C stops the viewer cleanly
    Image.fromarray(image).save(out)
    assert image.shape == (HEIGHT, WIDTH, 3)
    return image.astype(int)


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


def test_without_viser_the_viewer_names_the_extra(monkeypatch, tmp_path, capsys):
    from splatdreamer.cli import main

    monkeypatch.setitem(sys.modules, "viser", None)  # import viser -> ImportError
    ply = tmp_path / "ball.ply"
    save_ply(variants("a red ball")[0].splats, ply)
    assert main(["view", str(ply)]) == 2
    assert "pip install 'splatdreamer[viewer]'" in capsys.readouterr().err


def test_generate_viewer_serves_the_run_then_stops_on_ctrl_c(tmp_path):
    """The CLI door: `generate --viewer` serves the page during and after the run, and Ctrl-C ends it with 0."""
    from tiny_models import build_tiny_sd

    prior = build_tiny_sd(tmp_path / "prior", sample_size=16)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "splatdreamer.cli", "generate", "--prompt", "a red ball", "--steps", "3",
               "--prior.name", str(prior), "--splats.num-init", "50", "--output.out-dir", str(tmp_path / "run"),
               "--output.preview-every", "0", "--output.turntable-frames", "2", "--output.preview-size", "16",
               "--viewer", "--viewer-port", "8313", "--viewer-every", "2"]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, preexec_fn=_default_sigint
    )
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "(Ctrl-C to stop)" in line:
                break
        else:
            pytest.fail(f"generate --viewer exited ({server.wait()}) without serving: {''.join(lines)}")
        url = re.search(r"viewer at (http://\S+)", line).group(1)
        assert any("live viewer at " + url in earlier for earlier in lines)  # the address was shown at step 1
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        assert (tmp_path / "run" / "particle_0.ply").is_file()  # the run finished before this wait
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode == 0


@pytest.mark.slow
def test_view_of_a_run_folder_shows_particle_0_left_of_particle_1(tmp_path):
    image = _screenshot(_run_folder(tmp_path / "run"), tmp_path / "run.png")
    red = _mask(image, PALETTE["red"])[HEIGHT // 8 : -HEIGHT // 8, WIDTH // 8 : WIDTH // 2 + WIDTH // 5]
    green = _mask(image, PALETTE["green"])[HEIGHT // 8 : -HEIGHT // 8, WIDTH // 8 : WIDTH // 2 + WIDTH // 5]
    assert red.sum() > 500 and green.sum() > 500
    # +X is to the right when -Y is up and the camera looks along +Z: not a mirror image.
    assert np.nonzero(red)[1].max() < np.nonzero(green)[1].min()
