"""A web viewer (viser) for particles: from `.ply` files (`splatdreamer view`) or live from a running
generation (`splatdreamer generate --viewer`, or `LiveViewer` as `generate()`'s callback).

It only reads particles. viser draws each Gaussian with its mean, covariance, base colour (degree-0 SH:
view-dependent colour is not shown) and opacity. The scene's up axis is -Y, the orientation our files
have (DESIGN.md, Conventions), so the orbit controls turn about the object's own up axis.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splatdreamer.errors import BackendUnavailableError, ConfigError
from splatdreamer.render.reference import quat_scale_to_covar
from splatdreamer.splats import sh0_to_rgb, sh_degree_of

UP = (0.0, -1.0, 0.0)  # world up of our particles (3DGS / COLMAP convention)
ALL = "all, side by side"
STATUS_INTERVAL = 0.25  # seconds: the status line changes at most 4 times a second between particle updates
DRAWN = ("means", "scales", "quats", "opacities", "sh0")  # the parameters viser draws (no view-dependent SH)
EVERY_INTERFACE = ("", "0.0.0.0", "::")  # hosts that listen on every network interface


def _viser():
    try:
        import viser
    except ImportError:
        raise BackendUnavailableError(
            "the web viewer needs viser, which is not installed; pip install 'splatdreamer[viewer]' (or viser)"
        ) from None
    return viser


@dataclass
class SplatArrays:
    """One particle in the arrays `viser.SceneApi.add_gaussian_splats` takes (float32, CPU)."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3]
    rgbs: np.ndarray  # [N, 3] in [0, 1]
    opacities: np.ndarray  # [N, 1] in (0, 1)


def splat_arrays(splats: torch.nn.ParameterDict) -> SplatArrays:
    """Activate a particle for viser: Sigma = R S S^T R^T from the normalised quaternion and exp(scales), the
    base colour from sh0, sigmoid opacities. Gaussians holding a NaN or Inf are left out (a running
    generation may hold some for a step before it stops)."""
    t = {k: splats[k].detach().to("cpu", torch.float32) for k in DRAWN}
    finite = [torch.isfinite(v).flatten(1).all(1) if v.ndim > 1 else torch.isfinite(v) for v in t.values()]
    ok = torch.stack(finite).all(0)  # flatten(1), not reshape(N, -1): a particle may have no Gaussians left
    t = {k: v[ok] for k, v in t.items()}
    return SplatArrays(
        centers=t["means"].numpy(),
        covariances=quat_scale_to_covar(t["quats"], torch.exp(t["scales"])).numpy(),
        rgbs=sh0_to_rgb(t["sh0"][:, 0]).clamp(0, 1).numpy(),
        opacities=torch.sigmoid(t["opacities"])[:, None].numpy(),
    )


def _snapshot(splats: torch.nn.ParameterDict) -> dict[str, torch.Tensor]:
    """A detached CPU copy of what the viewer draws (the run goes on changing the particle in place)."""
    return {k: splats[k].detach().to("cpu", torch.float32, copy=True) for k in DRAWN}


def check_host(host: str) -> None:
    """Refuse a host this machine cannot listen on. viser retries the next port on every OSError, so a bad
    host (a typo, another machine's address) would otherwise hang without a word."""
    if host == "":  # every interface, as 0.0.0.0
        return
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # port 0: any free port, closed at once
    except (OSError, UnicodeError) as e:
        raise ConfigError(
            f"cannot listen on host {host!r} ({getattr(e, 'strerror', None) or e}); give an address of this "
            "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network interface)"
        ) from None


class Viewer:
    """A viser server showing a row of particles, with a selector, their facts and a status line.

    Particles are laid out side by side along +X (horizontal in our -Y-up world); selecting one moves it to
    the centre and hides the others. Stop it with `close()`.
    """

    def __init__(self, names: list[str], host: str = "127.0.0.1", port: int = 8080):
        viser = _viser()
        if not names:
            raise ConfigError("nothing to show: no particles were given to the viewer")
        self.names = names
        check_host(host)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction(UP)
        self.server.gui.configure_theme(show_share_button=False)  # sharing goes through viser's relay server
        self.spacing = 1.0
        self.handles: dict[int, object] = {}
        self.facts = ["" for _ in names]
        self._lock = threading.Lock()  # viser handles are touched from the caller's and viser's threads
        self.selector = self.server.gui.add_dropdown("Particle", (ALL, *names), initial_value=ALL)
        self.selector.on_update(lambda _: self._place())
        self.status = self.server.gui.add_markdown("")
        self.facts_md = self.server.gui.add_markdown("")
        self._set_camera()

    @property
    def url(self) -> str:
        """The address to open on this machine."""
        host = self.server.get_host()
        shown = "localhost" if host in ("127.0.0.1", *EVERY_INTERFACE) else host
        return f"http://{shown}:{self.server.get_port()}"

    @property
    def reach(self) -> str:
        """What to add to `url` when other machines can open the page too: on every interface the URL is
        localhost, which alone hides that the page is open to the network."""
        if self.server.get_host() not in EVERY_INTERFACE:
            return ""
        return (f"; it listens on every network interface, so other machines can open it too, at this machine's "
                f"address and port {self.server.get_port()}")  # fmt: skip

    def show(self, k: int, splats: torch.nn.ParameterDict | dict[str, torch.Tensor]) -> None:
        """Show (or replace) particle k and its line of facts (Gaussian count, SH degree where known)."""
        arrays = splat_arrays(splats)
        n = arrays.centers.shape[0]
        degree = sh_degree_of(splats) if "shN" in splats else None
        with self._lock:
            if n:
                extent = float(np.abs(arrays.centers).max())
                if 2.4 * extent > self.spacing:
                    self.spacing = 2.4 * extent
                    self._set_camera()
            self.handles[k] = self.server.scene.add_gaussian_splats(
                f"/particles/{k}",
                centers=arrays.centers,
                covariances=arrays.covariances,
                rgbs=arrays.rgbs,
                opacities=arrays.opacities,
            )
            sh = "" if degree is None else f" | {degree}"
            self.facts[k] = f"| {self.names[k]} | {n}{sh} |"
            header = "| particle | Gaussians |" + ("" if degree is None else " SH degree |")
            rule = "|---|---|" + ("" if degree is None else "---|")
            self.facts_md.content = "\n".join([header, rule, *(f for f in self.facts if f)])
            self._place_locked()

    def set_status(self, text: str) -> None:
        self.status.content = text

    def _place(self) -> None:
        with self._lock:
            self._place_locked()

    def _place_locked(self) -> None:
        chosen = self.selector.value
        for k, handle in self.handles.items():
            alone = chosen == self.names[k]
            handle.visible = chosen == ALL or alone
            offset = 0.0 if alone else (k - (len(self.names) - 1) / 2) * self.spacing
            handle.position = (offset, 0.0, 0.0)

    def _set_camera(self) -> None:
        """Start new clients looking at the row from the front (-Z side, a little above), upright."""
        camera = self.server.initial_camera
        width = self.spacing * len(self.names)
        camera.look_at = (0.0, 0.0, 0.0)
        camera.up = UP
        camera.fov = float(np.deg2rad(45.0))
        camera.position = (0.0, -0.5 * width, -2.5 * width)

    def close(self) -> None:
        self.server.stop()


def particle_files(path: Path) -> list[Path]:
    """The .ply files `view` shows: the file itself, or a run folder's particle_K.ply in order of K."""
    if path.is_dir():
        files = sorted(path.glob("particle_*.ply"), key=lambda p: (len(p.stem), p.stem))
        files = [f for f in files if not f.name.endswith(".compressed.ply")]
        if not files:
            exports = sorted(p.name for p in path.glob("particle_*") if p.name.endswith((".splat", ".compressed.ply")))
            if exports:
                raise ConfigError(
                    f"{path} holds only exports that splatdreamer cannot read back ({', '.join(exports[:3])}"
                    f"{', ...' if len(exports) > 3 else ''}); open them in a web splat viewer (SuperSplat), or keep "
                    "a .ply next time: --output.formats ply splat"
                )
            raise ConfigError(f"{path} holds no particle_K.ply; give a .ply file or a finished run's folder")
        return files
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a .ply file or a run folder")
    return [path]


def view(path: Path, host: str = "127.0.0.1", port: int = 8080) -> Viewer:
    """Start a viewer showing a .ply, or every particle of a run folder; returns it running (call `close()`)."""
    from splatdreamer.io.ply import load_ply

    files = particle_files(Path(path))
    particles = [load_ply(f, requires_grad=False) for f in files]
    for f, splats in zip(files, particles):
        if len(splats["means"]) == 0:
            raise ConfigError(f"{f} holds no Gaussians (its vertex count is 0); there is nothing to show")
    viewer = Viewer([f.name for f in files], host=host, port=port)
    for k, splats in enumerate(particles):
        viewer.show(k, splats)
    viewer.set_status(f"**{Path(path).name}**")
    return viewer


class LiveViewer:
    """`generate()`'s callback that shows the run in a viewer: the particles every `every` steps, the step,
    losses and Gaussian counts with them and after other steps (at most every `STATUS_INTERVAL` seconds).

    The training thread only copies the particles to the CPU (every `every` steps); activating them and
    sending them to the browser happen on a thread of the viewer's own, which takes only the newest state
    (a slow browser never holds the run back).

        with LiveViewer(port=8080) as live:
            generate(config, callback=live)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, every: int = 10) -> None:
        if every < 1:
            raise ConfigError(f"the viewer's update interval must be at least 1 step, not {every}")
        _viser()
        self.host, self.port, self.every = host, port, every
        self.viewer: Viewer | None = None
        self._pending_status: str | None = None
        self._pending_particles: list[dict[str, torch.Tensor]] | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="splatdreamer-viewer", daemon=True)
        self._last_status = -float("inf")
        # For tests and scripts/bench_viewer.py: particle updates sent, the seconds the run spent in this
        # callback, and the CPU seconds of the viewer's thread.
        self.updates = 0
        self.callback_seconds = 0.0
        self.worker_seconds = 0.0

    def start(self, num_particles: int) -> Viewer:
        self.viewer = Viewer([f"particle_{k}" for k in range(num_particles)], self.host, self.port)
        self._thread.start()
        return self.viewer

    def __call__(self, progress) -> None:
        begin = time.perf_counter()
        particles = progress.particles
        if self.viewer is None:
            self.start(len(particles))
            print(f"splatdreamer: live viewer at {self.viewer.url}{self.viewer.reach}")
        snapshot = None
        if progress.step % self.every == 0 or progress.step == progress.total or self.updates == 0:
            snapshot = [_snapshot(p) for p in particles]
        elif begin - self._last_status < STATUS_INTERVAL:
            self.callback_seconds += time.perf_counter() - begin
            return
        self._last_status = begin
        phi = "not trained" if progress.loss_phi is None else f"{progress.loss_phi:.4g}"
        losses = f"VSD loss {progress.loss_vsd:.4g}, phi loss {phi}"
        counts = " / ".join(map(str, progress.num_gaussians))
        status = f"**step {progress.step} / {progress.total}**  \n{losses}  \nGaussians: {counts}"
        with self._wake:
            self._pending_status = status
            if snapshot is not None:
                self._pending_particles = snapshot
                self.updates += 1
            self._wake.notify()
        self.callback_seconds += time.perf_counter() - begin

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopped or self._pending_status is not None)
                if self._stopped and self._pending_status is None:
                    return
                status, particles = self._pending_status, self._pending_particles
                self._pending_status = self._pending_particles = None
            begin = time.thread_time()
            if particles is not None:
                for k, splats in enumerate(particles):
                    self.viewer.show(k, splats)
            self.viewer.set_status(status)
            self.worker_seconds += time.thread_time() - begin

    def finish(self) -> None:
        """Hand the newest state to viser and stop taking updates; the page stays up until `close()`."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.finish()
        if self.viewer is not None:
            self.viewer.close()

    def __enter__(self) -> LiveViewer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
