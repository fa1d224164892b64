"""The generation loop: n particles of Gaussians distilled from a diffusion prior with VSD (or SDS).

One step (ProlificDreamer Algorithm 1, with Gaussians for NeRFs):
  1. every particle renders `views_per_particle` random cameras;
  2. the prior encodes all renders in one batch; t and noise are drawn;
  3. theta step: the surrogate loss whose gradient is w(t) (eps_pretrained - eps_phi) moves the Gaussians;
  4. phi step: the LoRA learns the current renders (detached) with the ordinary diffusion loss;
  5. each particle's densify/prune strategy runs on its own Gaussians.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection

import torch
from torch import Tensor
from tqdm.auto import tqdm

from splatdreamer import cameras as cams
from splatdreamer import signals, vsd
from splatdreamer.background import sample_background
from splatdreamer.config import (
    TOY_PRIOR,
    GenerateConfig,
    changed_fields,
    check_fields,
    from_dict,
    get_field,
    load_json,
    prompt_slug,
    save_json,
    to_dict,
)
from splatdreamer.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    NonFiniteError,
    RunFolderError,
)
from splatdreamer.io.atomic import atomic_save_torch, atomic_write, remove_stale_temporaries
from splatdreamer.io.lock import LOCK, RunLock
from splatdreamer.io.export import export
from splatdreamer.optimize import ParticleOptimizer
from splatdreamer.preview import write_previews
from splatdreamer.prior import DiffusionPrior
from splatdreamer.prior.text import view_prompt
from splatdreamer.render import render, resolve_backend
from splatdreamer.splats import all_finite, check_finite, num_gaussians, random_ball
from splatdreamer.timing import NO_TIMER, Timer

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


@dataclass
class Progress:
    """What the loop reports after every step (to the progress bar and to a user's callback)."""

    step: int  # steps done so far
    total: int
    loss_vsd: float
    loss_phi: float | None  # None where phi did not train this step (SDS; VSD once phi can no longer be asked)
    num_gaussians: list[int]
    t_mean: float
    grad_norm: float  # batch mean of the per-sample norm of the score gradient (the VSD loss's scale is arbitrary)
    seconds: float  # since this process started the loop
    # The particles after this step, for a callback to look at (`viewer.LiveViewer`): the run's own Parameters,
    # changed in place by the next step, so copy what you keep and never modify them. Not in metrics.jsonl.
    particles: list[torch.nn.ParameterDict] = field(default_factory=list, repr=False, compare=False)

    def metrics(self) -> dict[str, float | int | list[int]]:
        """The numbers, for a line of metrics.jsonl."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "particles"}


@dataclass
class Result:
    """What a finished generation produced."""

    run_dir: Path
    particles: list[torch.nn.ParameterDict]
    files: list[Path]  # per particle, the first export format's file
    previews: list[Path]  # per particle, a PNG contact sheet of fixed views
    turntables: list[Path]  # per particle, an animated GIF
    metrics: Path
    extra_files: list[Path] = field(default_factory=list)  # other export formats


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--device cuda was asked for, but this PyTorch has no usable CUDA device "
            f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch on a GPU machine"
        )
    return torch.device(name)


def resolve_prior_name(name: str) -> str:
    """'toy' -> the prior directory shipped inside the package."""
    if name == TOY_PRIOR:
        return str(Path(__file__).parent / "toy" / "prior")
    return name


def prior_supersample(name: str) -> int:
    """How many times its resolution a toy prior's training images were rendered at before each block was
    averaged down (`toy train --data.supersample`, kept in its training.json); 1 for any other prior. With
    `--splats.resolution` unset the loop renders at that multiple, so that the prior sees the renders as it saw
    its data (a bilinear resize by exactly 2 is the 2 x 2 mean)."""
    from splatdreamer.toy.train import read_training_record  # the toy trainer's modules only when asked

    try:
        factor = read_training_record(Path(resolve_prior_name(name)))["config"]["data"]["supersample"]
    except (KeyError, TypeError):  # no record (None), or one without the factor
        return 1
    return factor if isinstance(factor, int) and not isinstance(factor, bool) and 1 <= factor <= 8 else 1


# Flags a resumed run takes from the command line (or the given config); the rest comes from its config.json.
RESUME_FLAGS = ("resume", "steps")
GUIDANCE_FIELDS = ("vsd.cfg_scale", "vsd.cfg_scale_vsd", "vsd.cfg_scale_sds")
"""The fields `VSDConfig.guidance` reads: one resumed run may spell the same scale in another of them."""


@dataclass
class _RunFolder:
    """A run folder held by this process: what `_open_run_folder` found and made, to undo or finish."""

    config: GenerateConfig  # the config to run (a resumed run's own, with the allowed flags applied)
    run_dir: Path
    lock: RunLock
    created: list[Path]  # folders this call made, deepest first: removed again if the run does not start
    replace: bool  # the folder holds an old run, deleted once the new one has started
    notes: list[str]  # what was applied from the flags of a resumed run, to tell the user

    def abandon(self) -> None:
        """Undo what opening did, for a run that did not start: the lock and the folders this call made."""
        self.lock.release()
        for folder in self.created:
            try:
                folder.rmdir()  # only while empty: nothing of the user's is ever removed
            except OSError:
                break


def _open_run_folder(config: GenerateConfig, given: Collection[str]) -> _RunFolder:
    """Check the config and the folder, then lock it; nothing is deleted or written but the lock (and the
    folders leading to it). Raises `ConfigError` / `RunFolderError` naming the problem."""
    if config.resume is not None:
        return _open_resumed(config, given)
    config.validate()
    run_dir = Path(config.output.out_dir or Path("runs") / prompt_slug(config.prompt))
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"the output folder {run_dir} is a file; choose a folder with --output.out-dir")
        entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK) if run_dir.is_dir() else []
    except RunFolderError:
        raise
    except OSError as e:
        raise RunFolderError(f"cannot read the output folder {run_dir} ({e.strerror}); choose another with "
                             "--output.out-dir") from None  # fmt: skip
    if entries and not config.output.overwrite:
        raise ConfigError(
            f"the output folder {run_dir} already exists; pass --output.overwrite to replace it, "
            f"--resume {run_dir} to continue it, or --output.out-dir to choose another"
        )
    if entries and CONFIG not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunFolderError(
            f"{run_dir} is not a splatdreamer run (it has no {CONFIG}; it holds {shown}), and --output.overwrite "
            "replaces only runs; nothing was deleted. Choose another folder with --output.out-dir"
        )
    created = _make_folders(run_dir)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except BaseException:
        _RunFolder(config, run_dir, lock, created, False, []).abandon()
        raise
    saved = dataclasses.replace(config, output=dataclasses.replace(config.output, out_dir=run_dir, overwrite=False))
    return _RunFolder(saved, run_dir, lock, created, replace=bool(entries), notes=[])


def _open_resumed(config: GenerateConfig, given: Collection[str]) -> _RunFolder:
    check_fields(config)
    run_dir = Path(config.resume)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG} there; give the folder of an earlier run")
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunFolderError:
        _resumed_config(config, given, run_dir)  # a flag the run would ignore is named before "in use elsewhere"
        raise
    try:
        saved, notes = _resumed_config(config, given, run_dir)
    except BaseException:
        lock.release()
        raise
    return _RunFolder(saved, run_dir, lock, created=[], replace=False, notes=notes)


def _resumed_config(config: GenerateConfig, given: Collection[str], run_dir: Path) -> tuple[GenerateConfig, list[str]]:
    """The run's own config with the allowed flags applied, and what was applied; `ConfigError` for any other flag
    that differs from the run's (a resumed run keeps its config)."""
    saved = load_json(run_dir / CONFIG)
    chosen = {*given, *changed_fields(config, GenerateConfig())}  # a config cannot tell a default from unset
    differ = [n for n in changed_fields(config, saved) if n in chosen]
    # The run's None is its mode's own scale, so 7.5 typed on a VSD run asks for what it has; the other mode's
    # scale does not count at all.
    if config.vsd.guidance() == saved.vsd.guidance():
        differ = [n for n in differ if n not in GUIDANCE_FIELDS]
    ignored = [n for n in differ if n not in RESUME_FLAGS]
    if ignored:
        shown = ", ".join(f"--{n.replace('_', '-')} {get_field(config, n)!r} (the run has {get_field(saved, n)!r})"
                          for n in ignored)  # fmt: skip
        one = len(ignored) == 1
        raise ConfigError(
            f"--resume continues a run with its own {CONFIG}, so {shown} would be ignored; drop "
            f"{'it' if one else 'them'} (only --steps may change: the run's new length, at least the steps done), "
            f"or start a new run from it with --config {run_dir / CONFIG} and {'that flag' if one else 'those flags'}"
        )
    notes = []
    if "steps" in differ:
        notes.append(f"--steps {config.steps} applied to the resumed run: it now ends at step {config.steps} "
                     f"instead of {saved.steps}")  # fmt: skip
        saved.steps = config.steps
    saved.resume = run_dir
    saved.validate()
    return saved, notes


def _make_folders(run_dir: Path) -> list[Path]:
    """mkdir -p, returning the folders this call made, deepest first.

    A parent that another process creates meanwhile (two `toy eval` or batch processes sharing an output
    folder) is taken as it is; only the folders made here are removed again if a later one fails."""
    made: list[Path] = []
    try:
        for folder in reversed([p for p in (run_dir, *run_dir.parents) if not p.exists()]):
            try:
                folder.mkdir()
            except FileExistsError:
                if folder == run_dir or not folder.is_dir():
                    raise
                continue  # made by another process since the check: theirs, not ours to remove
            made.append(folder)
    except OSError as e:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise RunFolderError(f"cannot create the output folder {run_dir} ({e.strerror}); choose a folder you "
                             "can write to with --output.out-dir") from None  # fmt: skip
    return made[::-1]


def _clear_run_folder(run_dir: Path) -> None:
    """Delete an old run's files (the caller checked it is a run and holds its lock), keeping the lock."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class Generation:
    """The state of one run; `generate()` is the public door."""

    def __init__(self, config: GenerateConfig, run_dir: Path, prior: DiffusionPrior | None = None) -> None:
        """prior: an already built prior (benchmarks build one in memory); None = load `config.prior.name`."""
        self.config = config
        self.run_dir = run_dir
        self.device = resolve_device(config.device)
        self.backend = resolve_backend(config.splats.backend, self.device)
        torch.manual_seed(config.seed)  # gsplat's split draws from the global generator
        self.gen_cpu = torch.Generator().manual_seed(config.seed)  # cameras, backgrounds, timesteps
        self.gen_dev = torch.Generator(device=self.device).manual_seed(config.seed + 1)  # noise, VAE
        # phi's training draws (its t and noise) from a stream of its own, so that training phi or not, once it
        # can no longer be asked (`phi_in_use`), leaves every other draw of the run, and the particles, as they are.
        self.gen_phi = torch.Generator(device=self.device).manual_seed(config.seed + 2)

        dtype = None if config.prior.dtype == "auto" else getattr(torch, config.prior.dtype)
        prior_was_loaded = prior is None
        if prior is None:
            prior = DiffusionPrior.from_pretrained(
                resolve_prior_name(config.prior.name), device=self.device, dtype=dtype, lora_rank=config.prior.lora_rank,
                phi_base=None if config.prior.phi_base is None else resolve_prior_name(config.prior.phi_base),
                camera_init=config.prior.camera_init,
            )  # fmt: skip
        self.prior = prior
        if config.vsd.t_max >= prior.num_train_timesteps:
            raise ConfigError(
                f"--vsd.t-max {config.vsd.t_max} is beyond the prior's {prior.num_train_timesteps} training timesteps; "
                f"use at most {prior.num_train_timesteps - 1}"
            )
        self.text = self.prior.text_embeddings(config.prompt, config.negative_prompt)
        if prior_was_loaded and (Path(resolve_prior_name(config.prior.name)) / "training.json").exists():
            _note_unknown_toy_words(config.prompt)  # a prior `toy train` wrote: it knows only the toy words
        _note_cut_prompt(self.prior, config)
        supersample = prior_supersample(config.prior.name) if prior_was_loaded else 1
        self.resolution = config.splats.resolution or self.prior.resolution * supersample
        self.schedule = vsd.TimestepSchedule(
            t_min=config.vsd.t_min,
            t_max=config.vsd.t_max,
            t_max_annealed=config.vsd.t_max_annealed,
            anneal_step=config.vsd.anneal_step,
            kind=config.vsd.t_schedule,
            total_steps=config.steps,
            jitter=config.vsd.t_jitter,
        )

        self.particles = [
            random_ball(
                config.splats.num_init,
                radius=config.splats.init_radius,
                init_scale=config.splats.init_scale,
                init_opacity=config.splats.init_opacity,
                sh_degree=config.splats.sh_degree,
                color=_initial_color(config.splats.init_color, config.splats.init_color_spread, self.gen_cpu),
                generator=self.gen_cpu,
            ).to(self.device)
            for _ in range(config.particles)
        ]
        self.optimizers = [
            ParticleOptimizer(p, config.splats, config.strategy, config.steps, scene_scale=config.splats.init_radius)
            for p in self.particles
        ]
        warmup = phi_warmup(config)
        self.phi_optimizer = torch.optim.AdamW(self.prior.phi_parameters(), lr=config.prior.phi_lr)
        self.phi_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.phi_optimizer, lambda i: min(1.0, (i + 1) / warmup)  # official utils.py: linear warm-up
        )
        self.step = 0
        self.checkpoint_step: int | None = None  # the step of the checkpoint in run_dir, if one was saved or loaded
        # The last step's cameras and backgrounds, particle-major as the batch (for tools that look inside a
        # step, e.g. the camera-aware exact phi of `toy.exact.camera_phi`).
        self.last_cameras: cams.Cameras | None = None
        self.last_backgrounds: Tensor | None = None

    # ---------------------------------------------------------------- one step
    def train_step(self, timer: Timer = NO_TIMER) -> Progress:
        """One step of Algorithm 1 for every particle. `timer` times its parts (`scripts/bench_step.py`).

        The step synchronises with the device twice: to check the loss before it touches the Gaussians,
        and once at the end for the logged numbers and the Gaussians' finiteness (gsplat's strategy adds
        its own when it densifies).
        """
        cfg = self.config
        views = cfg.vsd.views_per_particle
        renders, cameras, backgrounds = [], [], []
        with timer.part("render"):
            for particle, opt in zip(self.particles, self.optimizers):
                cam = cams.sample(views, cfg.cameras.ranges(), self.resolution, self.resolution, self.gen_cpu)
                bg = sample_background(cfg.cameras.background, views, self.gen_cpu).to(self.device)
                out = render(
                    particle,
                    cam.to(self.device),
                    bg,
                    backend=self.backend,
                    rasterize_mode=cfg.splats.rasterize_mode,
                    packed=cfg.splats.packed,
                )
                opt.pre_backward(self.step, out.info)
                renders.append(out)
                cameras.append(cam)
                backgrounds.append(bg)
            images = torch.cat([r.rgb for r in renders])  # [K*V, 3, H, W], particles x views in one batch
        all_cams = cams.Cameras.cat(cameras).to(self.device)
        self.last_cameras, self.last_backgrounds = all_cams, torch.cat(backgrounds)
        batch = images.shape[0]
        labels = all_cams.view_labels() if cfg.vsd.view_dependent_prompts else None
        camera = all_cams.condition()

        # The prior's graph starts at a detached copy of the renders, so its backward (VAE) and the
        # rasterizer's can be timed apart; the gradient is the same as through one graph.
        pixels = images.detach().requires_grad_(True)
        with timer.part("encode"):
            latents = self.prior.encode_images(pixels, generator=self.gen_dev)
        t = self.schedule.sample_timesteps(batch, self.step, self.gen_cpu).to(self.device)
        out = vsd.score_distillation(
            self.prior,
            latents,
            t,
            text=self.text,
            view_labels=labels,
            camera=camera,
            mode=cfg.vsd.mode,
            cfg_scale=cfg.vsd.guidance(),
            phi_cfg_scale=cfg.prior.phi_cfg_scale,
            grad_clip=cfg.vsd.grad_clip,
            cfg_max_t=cfg.vsd.cfg_max_t,
            generator=self.gen_dev,
            timer=timer,
            phi_min_t=cfg.vsd.phi_min_t,
        )
        if not torch.isfinite(out.loss):
            raise NonFiniteError(
                f"the VSD loss became {out.loss.item()} at step {self.step}; lower --vsd.cfg-scale or the "
                "learning rates, or resume from the last checkpoint"
            )
        with timer.part("encode_backward"):
            # The surrogate's gradient is the mean over all K x V renders; times K, each particle gets the mean
            # over its own V views, as if it ran alone (Algorithm 1 updates each particle on its own). Adam does
            # not see the scale, but densification does: gsplat compares each Gaussian's screen-space gradient,
            # already multiplied by the number of cameras of its render, with grow_grad2d, so this keeps that
            # threshold independent of the number of particles.
            (out.loss * len(self.particles)).backward()
        with timer.part("render_backward"):
            images.backward(pixels.grad)
        with timer.part("optimizer_strategy"):
            for opt, r in zip(self.optimizers, renders):
                opt.step(self.step, r.info, packed=cfg.splats.packed)

        loss_phi = torch.zeros((), device=self.device)  # stacked below; reported only where phi trained
        trained_phi = self.phi_in_use()
        if trained_phi:
            x0 = latents.detach()
            with timer.part("phi_train"):
                for _ in range(cfg.prior.phi_steps):
                    t_phi, t_min = None, 0
                    if cfg.prior.phi_timesteps == "schedule":
                        t_phi = self.schedule.sample_timesteps(batch, self.step, self.gen_phi)
                    elif cfg.prior.phi_timesteps == "asked" and cfg.vsd.phi_min_t is not None:
                        # Uniform over the t the score asks phi about (phi_in_use: some t of a later step is above).
                        t_min = min(cfg.vsd.phi_min_t + 1, self.prior.num_train_timesteps - 1)
                    phi_loss = self.prior.phi_loss(
                        x0, self.text.plain(batch), camera, generator=self.gen_phi,
                        camera_dropout=cfg.prior.camera_dropout, t=t_phi, t_min=t_min,
                    )  # fmt: skip
                    phi_loss.backward()
                    self.phi_optimizer.step()
                    self.phi_optimizer.zero_grad(set_to_none=True)
                    self.phi_schedule.step()
                    loss_phi = phi_loss.detach()
        # One synchronisation for everything logged and checked.
        finite = [all_finite(p) for p in self.particles]
        loss_vsd, loss_phi, t_mean, grad_norm, nonfinite, *finite = torch.stack(
            [out.loss.detach(), loss_phi, t.float().mean(), out.grad_norm, out.nonfinite, *finite]
        ).tolist()
        # The score's nan_to_num keeps one bad value from poisoning the Gaussians; a score that is NaN everywhere
        # (a prior with broken weights) or a phi whose loss went NaN would leave the particles still for the rest
        # of the run while it reported success.
        if nonfinite == 1.0:
            raise NonFiniteError(
                f"every value of the prior's score was NaN or inf at step {self.step}: the prior's weights are "
                f"broken ({cfg.prior.name}); retrain or re-download it"
            )
        if trained_phi and not math.isfinite(loss_phi):
            raise NonFiniteError(
                f"phi's diffusion loss became {loss_phi} at step {self.step}; lower --prior.phi-lr, or check the "
                f"prior's weights ({cfg.prior.name})"
            )
        for k, ok in enumerate(finite):
            if not ok:
                check_finite(self.particles[k], f"particle {k} at step {self.step}")  # names the parameter
        self.step += 1
        return Progress(
            step=self.step,
            total=cfg.steps,
            loss_vsd=loss_vsd,
            loss_phi=loss_phi if trained_phi else None,
            num_gaussians=[num_gaussians(p) for p in self.particles],
            t_mean=t_mean,
            grad_norm=grad_norm,
            seconds=0.0,
        )

    def phi_in_use(self) -> bool:
        """Whether this step trains phi: in VSD, while a later step can still ask it. With `--vsd.phi-min-t`
        phi is asked only about t above it, and neither schedule's highest t ever rises again (the decreasing
        line falls; random t drops to `t_max_annealed`), so once the next step's highest t is at or below it,
        training phi would change nothing the run makes: the toy preset stops after about 40 of its 300 steps.
        phi's weights then stay as they were, in the checkpoint too; a run resumed with more `--steps`, whose
        falling t starts higher again, asks that phi."""
        cfg = self.config
        if cfg.vsd.mode != "vsd":
            return False
        return cfg.vsd.phi_min_t is None or self.schedule.timestep_bounds(self.step + 1)[1] > cfg.vsd.phi_min_t

    def particles_are_finite(self) -> bool:
        return bool(torch.stack([all_finite(p) for p in self.particles]).all())

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        """Write the run's state; only what `torch.load(weights_only=True)` reads back (tensors, numbers,
        strings, lists, dicts), so loading a checkpoint never runs code."""
        state = {
            "step": self.step,
            "particles": [opt.state_dict() for opt in self.optimizers],
            "phi": self.prior.phi_state_dict(),
            "phi_optimizer": self.phi_optimizer.state_dict(),
            "phi_schedule": self.phi_schedule.state_dict(),
            "rng_global": torch.get_rng_state(),
            "rng_cpu": self.gen_cpu.get_state(),
            "rng_dev": self.gen_dev.get_state(),
            "rng_phi": self.gen_phi.get_state(),
            "num_threads": torch.get_num_threads(),  # CPU results are bit-exact only with the same count
            "config": json.dumps(to_dict(self.config)),  # what the state belongs to (`_edited_since`)
        }
        atomic_save_torch(state, self.run_dir / CHECKPOINT)
        self.checkpoint_step = self.step

    def load_checkpoint(self) -> None:
        """Restore the state `save_checkpoint` wrote; `CheckpointError` naming the file if it cannot."""
        path = self.run_dir / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # an untrusted file: empty, truncated, garbage, or a pickle of more than data
            reason = ": ".join([type(e).__name__, *str(e).strip().splitlines()[:1]])[:160]
            raise CheckpointError(
                f"{path} is not a readable splatdreamer checkpoint ({reason}). Nothing in it was run. Delete it "
                f"to start the run again from step 0 (--resume {self.run_dir}), or start a new run"
            ) from None

        def unfit(e: Exception) -> CheckpointError:
            return CheckpointError(
                f"{path} does not fit this run ({type(e).__name__}: {str(e)[:200]}): it is damaged, or comes from "
                f"another configuration. Delete it to start the run again from step 0 (--resume {self.run_dir})"
            )

        fails = (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError)
        try:
            if not isinstance(state, dict) or not isinstance(state["step"], int) or state["step"] < 0:
                raise ValueError("no step count")
            edited = _edited_since(state.get("config"), self.config)  # no record in checkpoints of earlier versions
        except fails as e:
            raise unfit(e) from None
        if edited:  # before any state is loaded: a changed shape would fail there as "damaged"
            raise CheckpointError(
                f"{self.run_dir / CONFIG} was changed after {path} was saved: {'; '.join(edited)}. The checkpoint "
                "holds the state of the run as it was; put those values back to continue it, or start a new run "
                f"with --config {self.run_dir / CONFIG}"
            )
        try:
            self.step = state["step"]
            for opt, data in zip(self.optimizers, state["particles"], strict=True):
                opt.load_state_dict(data)
            self.prior.load_phi_state_dict(state["phi"])
            self.phi_optimizer.load_state_dict(state["phi_optimizer"])
            self.phi_schedule.load_state_dict(state["phi_schedule"])
            torch.set_rng_state(state["rng_global"].cpu())
            self.gen_cpu.set_state(state["rng_cpu"].cpu())
            self.gen_dev.set_state(state["rng_dev"])
            if "rng_phi" in state:  # checkpoints before 2026-11-29 drew phi's training from rng_dev
                self.gen_phi.set_state(state["rng_phi"])
            threads = state.get("num_threads", torch.get_num_threads())
        except fails as e:
            raise unfit(e) from None
        self.checkpoint_step = self.step
        if self.device.type == "cpu" and threads != torch.get_num_threads():
            print(f"splatdreamer: note: the run used {threads} CPU threads and this process uses "
                  f"{torch.get_num_threads()}; the result will differ in the last bits from an uninterrupted run "
                  f"(set OMP_NUM_THREADS={threads} to match it)")  # fmt: skip

    def saved_state(self) -> str:
        """What the run can be continued from, for the message of a stop."""
        if self.checkpoint_step is None:
            return f"no checkpoint was saved yet; --resume {self.run_dir} starts the run again from step 0"
        return (f"the checkpoint of step {self.checkpoint_step} in {self.run_dir} is intact; "
                f"continue with --resume {self.run_dir}")  # fmt: skip

    # ---------------------------------------------------------------- outputs
    def write_preview(self) -> None:
        size = self.config.output.preview_size
        from splatdreamer.io.images import contact_sheet, save_png
        from splatdreamer.preview import render_views

        views = cams.turntable(4, size, size)
        images = torch.cat([render_views(p, views, backend=self.backend) for p in self.particles])
        save_png(contact_sheet(images, columns=4), self.run_dir / "previews" / f"step_{self.step:06d}.png")

    def write_results(self) -> Result:
        out = self.config.output
        files, extra, sheets, gifs = [], [], [], []
        for k, particle in enumerate(self.particles):
            check_finite(particle, f"particle {k}")
            stem = self.run_dir / f"particle_{k}"
            for i, fmt in enumerate(out.formats):
                suffix = {"ply": ".ply", "splat": ".splat", "ply_compressed": ".compressed.ply"}[fmt]
                path = stem.with_name(stem.name + suffix)
                export(particle, path, fmt)
                (files if i == 0 else extra).append(path)
            sheet, gif = write_previews(particle, stem, out.preview_size, out.turntable_frames, backend=self.backend)
            sheets.append(sheet)
            gifs.append(gif)
        return Result(self.run_dir, self.particles, files, sheets, gifs, self.run_dir / METRICS, extra)


def _note_cut_prompt(prior: DiffusionPrior, config: GenerateConfig) -> None:
    """Say so when the text encoder cannot read the whole prompt (77 tokens for Stable Diffusion): the end is
    cut, and with view-dependent prompts the ", front view" suffix goes first, so the views lose their labels."""
    texts = [config.prompt]
    if config.vsd.view_dependent_prompts:
        texts += [view_prompt(config.prompt, label) for label in cams.VIEW_LABELS]
    counts = [prior.token_count(t) for t in texts]
    taken, length = max(n for n, _ in counts), counts[0][1]
    if taken > length:
        suffix = " with its view suffix" if config.vsd.view_dependent_prompts else ""
        print(f"splatdreamer: note: the prompt{suffix} takes {taken} tokens and the prior's text encoder reads "
              f"{length}; the last {taken - length} are cut"
              + (", the view suffix first, so the views lose their labels" if suffix else "")
              + ". Shorten the prompt.", file=sys.stderr, flush=True)  # fmt: skip


def _note_unknown_toy_words(prompt: str) -> None:
    """Say so when a prompt for a toy prior holds words it never saw ("a purple ball", "赤いボール"): it runs,
    but the prior reads those words as noise, and a user would otherwise take the result for its meaning."""
    from splatdreamer.toy.model import unknown_words
    from splatdreamer.toy.objects import PROMPTS

    unknown = unknown_words(prompt)
    if unknown:
        listed = ", ".join(repr(w) for w in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        print(f"splatdreamer: note: the toy prior knows only the words of its prompts ({'; '.join(PROMPTS)}); "
              f"{listed} {'is' if len(unknown) == 1 else 'are'} unknown to it and read as noise, not meaning",
              file=sys.stderr, flush=True)  # fmt: skip


def phi_warmup(config: GenerateConfig) -> int:
    """phi's warm-up in phi steps: as configured, or 2 % of the run's phi steps (official: 500 of 25k)."""
    if config.prior.phi_warmup_steps is not None:
        return max(config.prior.phi_warmup_steps, 1)
    return max(1, round(0.02 * config.steps * config.prior.phi_steps))


def _initial_color(mode: str, spread: float, generator: torch.Generator) -> tuple[float, float, float]:
    """A particle's starting colour: mid grey, or a random one in [0.2, 0.8]^3 (clear of the white background)
    moved towards grey to `spread` of its distance from it."""
    if mode == "grey":
        return (0.5, 0.5, 0.5)
    return tuple((0.5 + spread * 0.6 * (torch.rand(3, generator=generator) - 0.5)).tolist())


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after `step` (they will be run again), and any line a kill cut short."""
    if not path.exists():
        return
    if not path.is_file():
        raise RunFolderError(f"{path} is not a file; move it away (a run writes its metrics there) and resume again")

    def step_of(line: str) -> float:  # lines damaged by hand or by a kill count as after every step: dropped
        try:
            value = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError, IndexError):
            return float("inf")
        return value if isinstance(value, int) and not isinstance(value, bool) else float("inf")

    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line and step_of(line) <= step]
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


@contextlib.contextmanager
def _interrupt_between_steps():
    """Turn the first Ctrl-C (or SIGTERM, SIGHUP) into a flag checked between steps (so the checkpoint is
    consistent); a second one interrupts at once."""
    flag = threading.Event()

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    with signals.handled(signals.STOP_SIGNALS, handler):
        yield flag


def generate(
    config: GenerateConfig, callback: Callable[[Progress], None] | None = None, *, given: Collection[str] = ()
) -> Result:
    """Run a generation (or continue one, with `config.resume`) and write its files.

    A resumed run takes its settings from its own config.json. The fields set in `config` (those other than
    GenerateConfig's defaults, and those `given` names: dotted names such as "seed" or "vsd.cfg_scale", the
    CLI's typed flags, since a config cannot tell `--seed 0` from unset) must repeat the run's values, except
    `steps`, which sets the run's new length; any other is refused with a `ConfigError` naming it.

    Returns the particles and the paths of everything written. `callback` is called after every step
    with a `Progress` (its `particles` are the run's own: `viewer.LiveViewer` shows them in a browser). Ctrl-C saves a checkpoint before re-raising, so `--resume` can continue the run;
    the KeyboardInterrupt's message says what was saved.

    Everything is checked and loaded (config, folder, device, prior) before any file is written. The run
    folder is locked for the whole run (`io.lock`). With `output.overwrite`, an old run in the folder is
    deleted only once the new run has started, and only if it is a splatdreamer run (it has config.json).
    """
    if not isinstance(config, GenerateConfig):
        raise ConfigError(f"generate() takes a GenerateConfig, got {type(config).__name__}: build one with "
                          "GenerateConfig(prompt=...) or start from a preset, e.g. splatdreamer.presets.toy()")  # fmt: skip
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be a function of one Progress, got {type(callback).__name__}")
    if isinstance(given, str):
        raise ConfigError(f"given names config fields, e.g. given={{'seed'}}; got the string {given!r:.60}")
    folder = _open_run_folder(config, given)
    try:
        return _run(folder, callback)
    finally:
        folder.lock.release()


# Fields a resumed run may differ in from its checkpoint: the length (--steps), where it runs, and what it writes.
_RESUMABLE_CHANGES = ("steps", "resume", "device", "output.")


def _edited_since(saved: str | None, config: GenerateConfig) -> list[str]:
    """'NAME is now X, the checkpoint's run had Y' for each field in which `config` differs from the config a
    checkpoint was saved with (JSON in `saved`; None for a checkpoint older than that record), except those
    a run may change on resume. A hand-edited config.json (a new SH degree, another prior) would otherwise
    continue silently with the old state, or fail with a shape error deep in torch."""
    if saved is None:
        return []
    then = from_dict(GenerateConfig, json.loads(saved))
    changed = [n for n in changed_fields(config, then) if not n.startswith(_RESUMABLE_CHANGES)]
    return [f"{n} is now {get_field(config, n)!r}, the checkpoint's run had {get_field(then, n)!r}" for n in changed]


def _start(folder: _RunFolder) -> Generation:
    """Build the run (device, prior, particles; a resumed run's checkpoint), then take over the folder."""
    config, run_dir = folder.config, folder.run_dir
    try:
        run = Generation(config, run_dir)
        if config.resume is not None and (run_dir / CHECKPOINT).is_file():
            run.load_checkpoint()
            if config.steps < run.step:
                raise ConfigError(f"--steps {config.steps} is fewer than the {run.step} steps the checkpoint has "
                                  f"done; --steps is the run's whole length, so give at least {run.step}")  # fmt: skip
    except KeyboardInterrupt:
        folder.abandon()
        what = "nothing was written" if config.resume is None else f"the run in {run_dir} is unchanged"
        raise KeyboardInterrupt(f"before the run started; {what}") from None
    except BaseException:
        folder.abandon()
        raise
    # The new run has started: from here on the folder is its own.
    if folder.replace:
        _clear_run_folder(run_dir)
    remove_stale_temporaries(run_dir)  # of writes cut short by a kill; no one else writes here (the lock)
    if config.resume is None or folder.notes:
        save_json(dataclasses.replace(config, resume=None), run_dir / CONFIG)
    if config.resume is not None:
        _truncate_metrics(run_dir / METRICS, run.step)
        for note in folder.notes:
            print(f"splatdreamer: {note}")
    return run


def _run(folder: _RunFolder, callback: Callable[[Progress], None] | None) -> Result:
    config, run_dir = folder.config, folder.run_dir
    run = _start(folder)
    out = config.output
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=run.step, desc="splatdreamer", unit="step", dynamic_ncols=True)
    at_step_boundary = True
    try:
        with open(run_dir / METRICS, "a") as metrics, _interrupt_between_steps() as interrupted:
            while run.step < config.steps:
                at_step_boundary = False
                progress = run.train_step()
                at_step_boundary = True
                progress.seconds = time.perf_counter() - start
                progress.particles = run.particles
                metrics.write(json.dumps(progress.metrics()) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(
                    vsd=f"{progress.loss_vsd:.4f}", grad=f"{progress.grad_norm:.3g}",
                    phi="–" if progress.loss_phi is None else f"{progress.loss_phi:.4f}",
                    gaussians="/".join(map(str, progress.num_gaussians)), t=int(progress.t_mean),
                )  # fmt: skip
                if callback is not None:
                    callback(progress)
                if out.preview_every and run.step % out.preview_every == 0:
                    run.write_preview()
                if out.checkpoint_every and run.step % out.checkpoint_every == 0:
                    run.save_checkpoint()
                if interrupted.is_set():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        # Only a state between two steps resumes exactly; otherwise the last periodic checkpoint stays.
        if at_step_boundary and run.checkpoint_step != run.step:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while saving keeps the old one
                run.save_checkpoint()
        if run.checkpoint_step == run.step:
            raise KeyboardInterrupt(f"a checkpoint of step {run.step} was saved; continue with --resume {run_dir}")
        raise KeyboardInterrupt(run.saved_state()) from None
    except NonFiniteError as e:
        bar.close()
        if run.particles_are_finite():
            run.save_checkpoint()  # the loss went bad before any Gaussian was touched
            raise NonFiniteError(f"{e} (checkpoint of step {run.step} saved in {run_dir})") from None
        raise NonFiniteError(f"{e} ({run.saved_state()})") from None
    except Exception:
        bar.close()
        # A callback (or a preview write) that fails after a finished step leaves a state that resumes exactly.
        if at_step_boundary and run.checkpoint_step != run.step and run.particles_are_finite():
            with contextlib.suppress(Exception):
                run.save_checkpoint()
        raise
    bar.close()
    run.save_checkpoint()
    result = run.write_results()
    written = ", ".join(p.name for p in [*result.files, *result.extra_files])
    print(
        f"splatdreamer: {config.steps} steps in {time.perf_counter() - start:.0f} s; "
        f"{len(result.files)} particle(s) in {run_dir}/ ({written}, previews .png/.gif)"
    )
    return result
