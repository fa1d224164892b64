"""The whole loop on a tiny random prior: files, densification, resume, and bad input."""

import copy
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from splatdreamer.cli import main
from splatdreamer.config import GenerateConfig, save_json
from splatdreamer.errors import ConfigError, RunFolderError
from splatdreamer.generate import Generation, generate
from splatdreamer.io.lock import LOCK
from splatdreamer.io.ply import load_ply
from splatdreamer.splats import random_ball
from tiny_models import build_tiny_sd


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("prior"), sample_size=16)


def tiny_config(prior_dir, out_dir, steps=12, particles=2) -> GenerateConfig:
    c = GenerateConfig(prompt="a red ball", steps=steps, particles=particles, seed=3)
    c.prior.name = str(prior_dir)
    c.prior.phi_lr = 1e-3
    c.splats.num_init = 200
    c.vsd.views_per_particle = 2
    c.strategy.refine_start = 3
    c.strategy.refine_every = 4
    c.strategy.grow_grad2d = 1e-7  # every visible Gaussian grows: densification must show
    c.output.out_dir = out_dir
    c.output.preview_every = 6
    c.output.checkpoint_every = 6
    c.output.preview_size = 24
    c.output.turntable_frames = 3
    return c


def test_decreasing_timesteps_reach_the_loop_from_the_command_line(tiny_prior, tmp_path):
    """`--vsd.t-schedule decreasing --vsd.t-jitter 5`, as a user types it: the logged mean t of each step falls
    from near t_max to near t_min (the random schedule's would wander over [20, 980])."""
    c = tiny_config(tiny_prior, tmp_path / "run", steps=10, particles=1)
    c.output.checkpoint_every = c.output.preview_every = 0
    save_json(c, tmp_path / "c.json")
    assert main(["generate", "--config", str(tmp_path / "c.json"), "--vsd.t-schedule", "decreasing", "--vsd.t-jitter", "5"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["vsd"]
    assert (saved["t_schedule"], saved["t_jitter"]) == ("decreasing", 5)
    t = [json.loads(line)["t_mean"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    centres = [980 - 960 * i / 9 for i in range(10)]
    assert all(abs(a - b) <= 5 for a, b in zip(t, centres)), t


def test_phi_trains_at_the_particles_timesteps_when_asked(tiny_prior, tmp_path, monkeypatch):
    """--prior.phi-timesteps schedule: each phi step trains at t drawn from the particles' band of that step (here
    the decreasing schedule's); by default phi_loss draws its own t."""
    from splatdreamer.prior import DiffusionPrior

    seen = []
    phi_loss = DiffusionPrior.phi_loss
    monkeypatch.setattr(DiffusionPrior, "phi_loss", lambda self, *a, t=None, **k: (seen.append(t), phi_loss(self, *a, t=t, **k))[1])
    c = tiny_config(tiny_prior, tmp_path / "run", steps=5, particles=1)
    c.output.checkpoint_every = c.output.preview_every = 0
    c.vsd.t_schedule, c.vsd.t_jitter, c.prior.phi_timesteps, c.prior.phi_steps = "decreasing", 10, "schedule", 2
    generate(c)
    assert len(seen) == 10 and all(t is not None and t.shape == (2,) for t in seen)
    centres = [980 - 960 * i / 4 for i in range(5) for _ in range(2)]
    assert all(((t - centre).abs() <= 10).all() for t, centre in zip(seen, centres)), seen
    seen.clear()
    c.prior.phi_timesteps = "uniform"
    generate(dataclasses.replace(c, output=dataclasses.replace(c.output, out_dir=tmp_path / "run2")))
    assert len(seen) == 10 and all(t is None for t in seen)


@pytest.mark.parametrize("phi_min_t", [600, 999, None])
def test_phi_trains_only_where_the_score_asks_it(tiny_prior, tmp_path, monkeypatch, phi_min_t):
    """--prior.phi-timesteps asked: phi trains at t > --vsd.phi-min-t alone, spread over that band; at 999 (never
    asked) not at all; without a gate over all timesteps, as uniform does. The t are the ones phi's loss noises at."""
    from splatdreamer.prior import DiffusionPrior

    seen, training = [], []
    phi_loss, add_noise = DiffusionPrior.phi_loss, DiffusionPrior.add_noise

    def spy_loss(self, *a, **k):
        training.append(1)
        try:
            return phi_loss(self, *a, **k)
        finally:
            training.pop()

    def spy_noise(self, x0, noise, t):
        if training:
            seen.append(t.detach().clone())
        return add_noise(self, x0, noise, t)

    monkeypatch.setattr(DiffusionPrior, "phi_loss", spy_loss)
    monkeypatch.setattr(DiffusionPrior, "add_noise", spy_noise)
    c = tiny_config(tiny_prior, tmp_path / "run", steps=20, particles=2)
    c.output.checkpoint_every = c.output.preview_every = 0
    c.prior.phi_timesteps, c.vsd.phi_min_t = "asked", phi_min_t
    generate(c)
    if phi_min_t == 999:  # above every t the schedule draws (980): phi is never asked, so never trained
        assert seen == []
        return
    t = torch.cat(seen)  # 2 particles x 2 views per step
    assert len(seen) == 20 and t.shape == (80,)
    low = {600: 601, None: 0}[phi_min_t]
    assert int(t.min()) >= low and int(t.max()) <= 999
    assert int(t.min()) < low + 100 and int(t.max()) > 900, t  # spread over the band, not at one end of it


def test_phi_stops_training_once_no_later_step_can_ask_it_and_the_particles_do_not_change(
    tiny_prior, tmp_path, monkeypatch
):
    """With --vsd.phi-min-t 700 and t falling from 980 over 12 steps (band +-10), the next step's highest t is
    above 700 only after steps 0, 1, 2: phi trains 3 times and logs no loss after. Training it on, as before,
    changes phi but not one bit of the particles: phi's draws have their own generator."""
    c = tiny_config(tiny_prior, tmp_path / "run", steps=12, particles=1)
    c.output.checkpoint_every = c.output.preview_every = 0
    c.vsd.t_schedule, c.vsd.t_jitter, c.vsd.phi_min_t, c.prior.phi_timesteps = "decreasing", 10, 700, "asked"
    schedules = []
    real_init = Generation.__init__

    def spy_init(self, *a, **k):
        real_init(self, *a, **k)
        schedules.append(self.phi_schedule)

    monkeypatch.setattr(Generation, "__init__", spy_init)
    stopped = generate(c)
    logged = [json.loads(line)["loss_phi"] for line in stopped.metrics.read_text().splitlines()]
    assert all(isinstance(x, float) for x in logged[:3]) and logged[3:] == [None] * 9, logged
    assert schedules[0].last_epoch == 3

    monkeypatch.setattr(Generation, "phi_in_use", lambda self: True)
    always = generate(dataclasses.replace(c, output=dataclasses.replace(c.output, out_dir=tmp_path / "always")))
    assert schedules[1].last_epoch == 12
    for a, b in zip(stopped.particles, always.particles, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a), "phi's training moved the particles"


def test_end_to_end_two_particles(tiny_prior, tmp_path):
    progress = []
    result = generate(tiny_config(tiny_prior, tmp_path / "run"), callback=progress.append)
    assert len(result.files) == 2 and all(p.exists() for p in result.previews + result.turntables)
    start = random_ball(200, generator=torch.Generator().manual_seed(3))
    for path, particle in zip(result.files, result.particles):
        loaded = load_ply(path)
        torch.testing.assert_close(loaded["means"], particle["means"].detach())
        assert loaded["means"].shape[0] > 200  # densified
    assert not torch.allclose(result.particles[0]["sh0"].detach()[:200], start["sh0"])  # colours moved
    lines = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 13))
    assert progress[-1].step == 12 and progress[-1].num_gaussians == [m for m in lines[-1]["num_gaussians"]]
    assert (tmp_path / "run" / "previews" / "step_000006.png").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prompt"] == "a red ball"


def test_every_export_format_is_written_and_named_in_the_summary(tiny_prior, tmp_path, capsys):
    """Found by a hostile-input pass: with two formats the closing line named only the first one's files."""
    config = tiny_config(tiny_prior, tmp_path / "run", steps=2, particles=1)
    config.output.formats = ("splat", "ply")
    result = generate(config)
    assert [p.name for p in result.files] == ["particle_0.splat"]
    assert [p.name for p in result.extra_files] == ["particle_0.ply"]
    n = load_ply(result.extra_files[0])["means"].shape[0]
    assert result.files[0].stat().st_size == 32 * n  # antimatter15's 32 bytes per Gaussian
    assert "(particle_0.splat, particle_0.ply, previews .png/.gif)" in capsys.readouterr().out


def test_a_prompt_longer_than_the_text_encoder_reads_gets_a_note(tiny_prior, tmp_path, capsys):
    """Found by a hostile-input pass: a long prompt was cut to the text encoder's length without a word, and with
    view-dependent prompts the ", front view" suffix is what goes first."""
    from splatdreamer.prior import DiffusionPrior

    prior = DiffusionPrior.from_pretrained(tiny_prior)
    _, length = prior.token_count("a red ball")
    for prompt, cut in [("a red ball", False), ("a red ball " + "very " * length, True)]:
        config = tiny_config(tiny_prior, tmp_path / str(cut), steps=1, particles=1)
        config.prompt = prompt
        generate(config)
        err = capsys.readouterr().err
        assert ("the view suffix first, so the views lose their labels" in err) == cut, err
        if cut:
            assert f"the prior's text encoder reads {length}" in err


def test_resume_drops_damaged_metric_lines_instead_of_failing(tiny_prior, tmp_path):
    """Found by a hostile-input pass: non-UTF-8 bytes or a string step in metrics.jsonl stopped --resume with a
    UnicodeDecodeError or TypeError traceback; a folder there, with an IsADirectoryError."""

    def stop_after_six(p):
        if p.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tiny_config(tiny_prior, tmp_path / "cut"), callback=stop_after_six)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'garbage{{{\n\x00\xff\xfe\n{"step": "x"}\n{"step": true}\n[]\n')
    result = generate(GenerateConfig(resume=tmp_path / "cut"))
    assert [json.loads(line)["step"] for line in result.metrics.read_text().splitlines()] == list(range(1, 13))
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_config(tiny_prior, tmp_path / "cut2"), callback=stop_after_six)
    (tmp_path / "cut2" / "metrics.jsonl").unlink()
    (tmp_path / "cut2" / "metrics.jsonl").mkdir()
    with pytest.raises(RunFolderError, match="metrics.jsonl is not a file; move it away"):
        generate(GenerateConfig(resume=tmp_path / "cut2"))


def test_resume_matches_an_uninterrupted_run(tiny_prior, tmp_path):
    full = generate(tiny_config(tiny_prior, tmp_path / "full"))

    def stop_after_six(p):
        if p.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tiny_config(tiny_prior, tmp_path / "cut"), callback=stop_after_six)
    resumed_config = GenerateConfig(resume=tmp_path / "cut")
    resumed = generate(resumed_config)
    for a, b in zip(full.particles, resumed.particles):
        for key in a.keys():
            assert torch.equal(a[key], b[key]), key


def test_bad_input_exits_with_a_message_and_no_files(tiny_prior, tmp_path, capsys):
    assert main(["generate", "--prompt", "  ", "--output.out-dir", str(tmp_path / "x")]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["generate", "--prompt", "a", "--steps", "0", "--output.out-dir", str(tmp_path / "x")]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    assert main(["generate", "--preset", "nope", "--prompt", "a"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a", "--prior.name", str(tmp_path / "nowhere"),
                 "--output.out-dir", str(tmp_path / "y")]) == 2  # fmt: skip
    assert "--prior.name toy" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["generate", "--prompt", "a", "--output.out-dir", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    if not torch.cuda.is_available():
        assert main(["generate", "--prompt", "a", "--device", "cuda", "--output.out-dir", str(tmp_path / "z")]) == 2
        assert "no usable CUDA" in capsys.readouterr().err
        assert not (tmp_path / "z").exists()


def test_nan_loss_stops_with_a_checkpoint_and_no_ply(tiny_prior, tmp_path, monkeypatch):
    """A loss that turns NaN before any Gaussian is touched: checkpoint of that step, no .ply, resumable."""
    from splatdreamer.errors import NonFiniteError
    from splatdreamer.prior import DiffusionPrior

    encode, calls = DiffusionPrior.encode_images, []

    def poisoned(self, images, generator=None):
        calls.append(1)
        latents = encode(self, images, generator=generator)
        return latents * float("nan") if len(calls) == 5 else latents  # the 5th step (index 4)

    monkeypatch.setattr(DiffusionPrior, "encode_images", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"VSD loss became nan at step 4.*checkpoint of step 4 saved"):
        generate(tiny_config(tiny_prior, run_dir))
    assert not list(run_dir.glob("*.ply"))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 4
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    monkeypatch.setattr(DiffusionPrior, "encode_images", encode)
    resumed = generate(GenerateConfig(resume=run_dir))
    assert len(resumed.files) == 2 and all(torch.isfinite(load_ply(p)["means"]).all() for p in resumed.files)


def test_a_prior_with_nan_weights_stops_the_run_instead_of_leaving_the_particles_still(tiny_prior, tmp_path):
    """The score's nan_to_num turned an all-NaN score into a zero gradient: the run reported success with
    Gaussians that never moved (found by a hostile-input pass)."""
    import shutil

    from diffusers import UNet2DConditionModel

    from splatdreamer.errors import NonFiniteError

    broken = tmp_path / "broken_prior"
    shutil.copytree(tiny_prior, broken)
    unet = UNet2DConditionModel.from_pretrained(broken / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.fill_(float("nan"))
    unet.save_pretrained(broken / "unet")
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"every value of the prior's score was NaN or inf at step 0"):
        generate(tiny_config(broken, run_dir))
    assert not list(run_dir.glob("*.ply"))


def test_a_nan_phi_loss_stops_the_run(tiny_prior, tmp_path, monkeypatch):
    from splatdreamer.errors import NonFiniteError
    from splatdreamer.prior import DiffusionPrior

    phi_loss = DiffusionPrior.phi_loss
    monkeypatch.setattr(DiffusionPrior, "phi_loss", lambda self, *a, **k: phi_loss(self, *a, **k) * float("nan"))
    with pytest.raises(NonFiniteError, match=r"phi's diffusion loss became nan at step 0; lower --prior.phi-lr"):
        generate(tiny_config(tiny_prior, tmp_path / "run"))


def test_nan_in_gaussians_stops_naming_them_and_keeps_the_last_checkpoint(tiny_prior, tmp_path):
    from splatdreamer.errors import NonFiniteError

    def break_particle_one(p):
        if p.step == 7:  # after the periodic checkpoint of step 6
            with torch.no_grad():
                run_particles[1]["scales"][5] = float("inf")

    run_particles = []
    config = tiny_config(tiny_prior, tmp_path / "run")
    from splatdreamer.generate import Generation

    init = Generation.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        run_particles.extend(self.particles)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Generation, "__init__", remember)
        message = r"particle 1 at step 7: \d+ Gaussians have a NaN or Inf in '\w+'.*checkpoint of step 6 in .* is intact"
        with pytest.raises(NonFiniteError, match=message):
            generate(config, callback=break_particle_one)
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("*.ply"))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 6


# ------------------------------------------------------------------------------ the loop's scales and counts


def _capturing_run(tiny_prior, tmp_path, monkeypatch, particles, **changes):
    """A Generation whose renders and score gradients are recorded at every step."""
    import dataclasses

    from splatdreamer import vsd

    gen_module = sys.modules["splatdreamer.generate"]  # the package attribute `generate` is the function

    config = tiny_config(tiny_prior, tmp_path, steps=50, particles=particles)
    for section, values in changes.items():
        setattr(config, section, dataclasses.replace(getattr(config, section), **values))
    captured = {"rgb_grads": {}, "score_grads": [], "cfg": []}
    real_render, real_distill = gen_module.render, vsd.score_distillation

    def render(*args, **kwargs):
        out = real_render(*args, **kwargs)
        k = len(captured["rgb_grads"])  # the k-th render call of the step is particle k's
        captured["rgb_grads"][k] = None
        out.rgb.register_hook(lambda g: captured["rgb_grads"].__setitem__(k, g.detach().clone()))
        return out

    def distill(*args, **kwargs):
        out = real_distill(*args, **kwargs)
        captured["score_grads"].append(out.grad.clone())
        captured["cfg"].append(kwargs["cfg_scale"])
        return out

    monkeypatch.setattr(gen_module, "render", render)
    monkeypatch.setattr(vsd, "score_distillation", distill)
    return Generation(config, tmp_path), captured


@pytest.mark.parametrize("particles", [1, 3])
def test_each_particle_gets_the_mean_gradient_over_its_own_views(tiny_prior, tmp_path, monkeypatch, particles):
    """Algorithm 1 moves each particle by the mean score gradient of its own renders, whatever K is."""
    run, captured = _capturing_run(tiny_prior, tmp_path, monkeypatch, particles)
    run.train_step()
    views = run.config.vsd.views_per_particle
    grad = captured["score_grads"][0]  # [K * V, 3, h, w] w(t) (eps_pre - eps_phi)
    assert len(captured["rgb_grads"]) == particles and grad.abs().sum() > 0
    for k, rgb_grad in captured["rgb_grads"].items():
        # pixel prior: latents = 2 x - 1, so d loss / d pixels = 2 grad / V for each of the particle's V views
        expected = 2.0 * grad[k * views : (k + 1) * views] / views
        torch.testing.assert_close(rgb_grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("phi_steps", [1, 3])
def test_phi_takes_exactly_phi_steps_updates_per_step_and_none_for_sds(tiny_prior, tmp_path, monkeypatch, phi_steps):
    run, _ = _capturing_run(tiny_prior, tmp_path / "vsd", monkeypatch, 2, prior={"phi_steps": phi_steps})
    calls = []
    real_loss = run.prior.phi_loss
    run.prior.phi_loss = lambda *a, **k: calls.append(1) or real_loss(*a, **k)
    before = [p.detach().clone() for p in run.prior.phi_parameters()]
    for _ in range(4):
        run.train_step()
    assert len(calls) == 4 * phi_steps and run.phi_schedule.last_epoch == 4 * phi_steps
    assert any(not torch.equal(a, b) for a, b in zip(before, run.prior.phi_parameters()))

    sds, _ = _capturing_run(tiny_prior, tmp_path / "sds", monkeypatch, 2, vsd={"mode": "sds"})
    frozen = [p.detach().clone() for p in sds.prior.phi_parameters()]
    sds.train_step()
    assert sds.phi_schedule.last_epoch == 0
    assert all(torch.equal(a, b) for a, b in zip(frozen, sds.prior.phi_parameters()))


def test_phi_warmup_defaults_to_two_percent_of_the_run(tiny_prior, tmp_path):
    from splatdreamer.generate import phi_warmup

    config = tiny_config(tiny_prior, tmp_path, steps=1000)
    assert config.prior.phi_warmup_steps is None and phi_warmup(config) == 20
    config.prior.phi_steps = 4
    assert phi_warmup(config) == 80  # counted in phi steps
    config.prior.phi_warmup_steps = 7
    assert phi_warmup(config) == 7


@pytest.mark.parametrize(("mode", "given", "used"), [("vsd", None, 7.5), ("sds", None, 100.0), ("sds", 7.5, 7.5)])
def test_sds_uses_dreamfusions_cfg_100_unless_set(tiny_prior, tmp_path, monkeypatch, mode, given, used):
    run, captured = _capturing_run(tiny_prior, tmp_path, monkeypatch, 1, vsd={"mode": mode, "cfg_scale": given})
    run.train_step()
    assert captured["cfg"] == [used]


def test_phi_base_and_camera_init_reach_the_prior_from_the_config(tiny_prior, tmp_path):
    from splatdreamer.generate import Generation
    from tiny_models import build_tiny_sd

    vpred = build_tiny_sd(tmp_path / "vpred", prediction_type="v_prediction", sample_size=16, seed=1)
    config = tiny_config(tiny_prior, tmp_path / "run")
    config.prior.phi_base = str(vpred)
    config.prior.camera_init = "zero"
    run = Generation(config, tmp_path / "run")
    assert run.prior.phi_unet is not run.prior.unet and run.prior.phi_prediction_type == "v_prediction"
    assert not run.prior.camera_embedding.linear_2.weight.any()
    default = Generation(tiny_config(tiny_prior, tmp_path / "b"), tmp_path / "b").prior
    assert default.phi_unet is default.unet and default.camera_embedding.linear_2.weight.any()


def test_random_initial_colours_differ_per_particle_and_grey_stays_grey(tiny_prior, tmp_path):
    from splatdreamer.generate import Generation
    from splatdreamer.splats import sh0_to_rgb

    config = tiny_config(tiny_prior, tmp_path / "a", particles=3)
    grey = [sh0_to_rgb(p["sh0"].detach()[:, 0]).mean(0) for p in Generation(config, tmp_path / "a").particles]
    assert all(torch.allclose(c, torch.full((3,), 0.5), atol=0.02) for c in grey)
    config.splats.init_color = "random"
    colors = [sh0_to_rgb(p["sh0"].detach()[:, 0]).mean(0) for p in Generation(config, tmp_path / "b").particles]
    assert all(((c > 0.18) & (c < 0.82)).all() for c in colors)
    assert min(torch.dist(a, b) for i, a in enumerate(colors) for b in colors[i + 1 :]) > 0.05
    config.splats.init_color_spread = 0.0  # random draws scaled all the way to grey
    spread0 = [sh0_to_rgb(p["sh0"].detach()[:, 0]).mean(0) for p in Generation(config, tmp_path / "c").particles]
    assert all(torch.allclose(c, torch.full((3,), 0.5), atol=0.02) for c in spread0)


def test_initial_colour_spread_scales_the_same_draws_towards_grey():
    from splatdreamer.generate import _initial_color

    full = torch.tensor(_initial_color("random", 1.0, torch.Generator().manual_seed(3)))
    near = torch.tensor(_initial_color("random", 0.25, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(near - 0.5, 0.25 * (full - 0.5))
    assert ((full >= 0.2) & (full <= 0.8)).all() and (full - 0.5).abs().max() > 0.05
    assert _initial_color("grey", 0.25, torch.Generator()) == (0.5, 0.5, 0.5)




# ---------------------------------------------------------------- the run folder, the lock, checkpoints, resume


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def small_config(prior_dir, out_dir, steps=4):
    c = tiny_config(prior_dir, out_dir, steps=steps, particles=1)
    c.output.preview_every = 0
    c.output.checkpoint_every = 2
    c.output.preview_size = 8
    c.output.turntable_frames = 1
    return c


@pytest.fixture(scope="module")
def finished_run(tiny_prior, tmp_path_factory):
    """A finished 4-step run; tests copy it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    generate(small_config(tiny_prior, run_dir))
    return run_dir


def copy_run(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def metric_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_overwrite_with_a_bad_prior_keeps_the_old_run(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    before = files_of(run_dir)
    args = ["generate", "--prompt", "a", "--output.out-dir", str(run_dir), "--output.overwrite"]
    assert main([*args, "--prior.name", str(tmp_path / "typo")]) == 2
    assert "--prior.name toy" in capsys.readouterr().err
    assert files_of(run_dir) == before
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "no usable CUDA" in capsys.readouterr().err
        assert files_of(run_dir) == before


def test_overwrite_replaces_a_run_once_the_new_one_has_started(tiny_prior, finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "previews").mkdir(exist_ok=True)
    (run_dir / "previews" / "step_000100.png").write_bytes(b"old")
    config = small_config(tiny_prior, run_dir, steps=2)
    config.output.overwrite = True
    seen = []
    generate(config, callback=lambda p: seen.append(sorted(q.name for q in run_dir.iterdir())))
    assert seen[0] == [LOCK, "config.json", "metrics.jsonl"]  # the old run was gone when the first step ended
    assert metric_steps(run_dir) == [1, 2]
    assert not (run_dir / "previews").exists() and not (run_dir / LOCK).exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_prior, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ([], ["--device", "cuda"]):
        args = ["generate", "--prompt", "a", "--output.out-dir", str(mine), "--output.overwrite", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "is not a splatdreamer run (it has no config.json; it holds thesis.tex)" in err
        assert "nothing was deleted" in err
        assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_run_that_cannot_start_leaves_the_users_empty_folder(tmp_path, capsys):
    empty = tmp_path / "made_by_me"
    empty.mkdir()
    bad_prior = ["--prior.name", str(tmp_path / "no")]
    assert main(["generate", "--prompt", "a", "--output.out-dir", str(empty), *bad_prior]) == 2
    assert empty.is_dir() and list(empty.iterdir()) == []
    deep = tmp_path / "new" / "deeper"
    assert main(["generate", "--prompt", "a", "--output.out-dir", str(deep), *bad_prior]) == 2
    assert not (tmp_path / "new").exists()  # what the run made, it removed


def test_an_output_path_that_is_a_file_or_cannot_be_written_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["generate", "--prompt", "a", "--output.out-dir", str(tmp_path / "file")]) == 2
    assert f"the output folder {tmp_path / 'file'} is a file" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a", "--output.out-dir", str(tmp_path / "file" / "run")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a", "--output.out-dir", "/proc/1/run"]) == 2  # not writable, even by root
    assert "cannot create the output folder /proc/1/run" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


def test_a_folder_in_use_is_refused_and_a_stale_lock_is_not(tiny_prior, finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK).write_text(f"{child.pid} {socket.gethostname()} -\n")
        before = files_of(run_dir)
        save_json(small_config(tiny_prior, run_dir), tmp_path / "again.json")
        assert main(["generate", "--config", str(tmp_path / "again.json"), "--output.overwrite"]) == 2
        assert f"in use by another splatdreamer run (pid {child.pid})" in capsys.readouterr().err
        assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 2
        assert f"in use by another splatdreamer run (pid {child.pid})" in capsys.readouterr().err
        assert files_of(run_dir) == before
    finally:
        child.kill()
        child.wait()
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 0  # its process is gone: stale
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6] and not (run_dir / LOCK).exists()


HOSTILE_MARKER = "pwned"


class Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {HOSTILE_MARKER}",))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "hostile", "foreign"])
def test_a_bad_checkpoint_exits_2_naming_it_and_runs_nothing(finished_run, tmp_path, capsys, monkeypatch, damage):
    run_dir = copy_run(finished_run, tmp_path)
    path = run_dir / "checkpoint.pt"
    good = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "hostile":
        torch.save({"step": Hostile()}, path)
    else:
        torch.save({"step": 2, "particles": []}, path)  # loadable, but not this run's
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"splatdreamer: error: {path}" in err and "Traceback" not in err
    assert "Delete it to start the run again from step 0" in err
    assert not (tmp_path / HOSTILE_MARKER).exists()
    assert not (run_dir / LOCK).exists()


def test_a_blank_out_dir_is_refused_before_anything_is_written(tiny_prior, tmp_path, capsys, monkeypatch):
    """Found by a hostile-input pass: `--output.out-dir ""` (an unset $OUT) is Path(""), the current folder: the run
    wrote its files there (and with --output.overwrite in an earlier run's folder would have deleted that run)."""
    save_json(small_config(tiny_prior, None, steps=1), tmp_path / "c.json")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for flags in (["--output.out-dir", ""], ["--output.out_dir= "]):
        assert main(["generate", "--config", str(tmp_path / "c.json"), *flags]) == 2
        assert ("splatdreamer: error: --output.out-dir is blank, which would be the current folder; give a folder, "
                "e.g. --output.out-dir runs/a_red_ball, or leave it out for runs/<prompt>") in capsys.readouterr().err
    assert list((tmp_path / "cwd").iterdir()) == []


def test_a_blank_resume_is_refused_not_the_current_folder(finished_run, tmp_path, capsys, monkeypatch):
    """`--resume ""` (an unset $RUN) is Path(""), the current folder: inside a run folder it resumed that run."""
    run_dir = copy_run(finished_run, tmp_path)
    before = files_of(run_dir)
    monkeypatch.chdir(run_dir)
    for flags in (["--resume", ""], ["--resume= "]):
        assert main(["generate", *flags, "--steps", "6"]) == 2
        assert ("splatdreamer: error: --resume is blank, which would be the current folder; give the folder of an "
                "earlier run, e.g. --resume runs/a_red_ball") in capsys.readouterr().err
    assert files_of(run_dir) == before


def test_resume_refuses_a_config_json_edited_after_the_checkpoint(finished_run, tmp_path, capsys):
    """A hand-edited config.json used to continue silently with the old state (a new SH degree kept the old
    coefficients). Output settings may change; anything the state depends on may not."""
    run_dir = copy_run(finished_run, tmp_path)
    config_path = run_dir / "config.json"
    original = json.loads(config_path.read_text())
    edited = copy.deepcopy(original)
    edited["splats"]["sh_degree"] = (original["splats"]["sh_degree"] + 1) % 4
    edited["seed"] = original["seed"] + 1
    config_path.write_text(json.dumps(edited))
    before = files_of(run_dir)
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 2
    err = capsys.readouterr().err
    assert f"{config_path} was changed after {run_dir / 'checkpoint.pt'} was saved" in err and "Traceback" not in err
    assert f"seed is now {original['seed'] + 1}, the checkpoint's run had {original['seed']}" in err
    assert f"splats.sh_degree is now {edited['splats']['sh_degree']}" in err
    assert files_of(run_dir) == before and not (run_dir / LOCK).exists()
    # Put back, with only an output setting changed: the run continues.
    original["output"]["preview_every"] = original["output"]["preview_every"] + 1
    config_path.write_text(json.dumps(original))
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 0
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_flags_it_would_ignore_and_applies_more_steps(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    before = files_of(run_dir)
    assert main(["generate", "--resume", str(run_dir), "--steps", "6", "--prompt", "a blue cube", "--seed", "5"]) == 2
    assert ("--prompt 'a blue cube' (the run has 'a red ball'), --seed 5 (the run has 3) would be ignored; drop them"
            in capsys.readouterr().err)  # fmt: skip
    assert main(["generate", "--preset", "toy", "--resume", str(run_dir)]) == 2
    assert "drop --preset / --config" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--prompt 'a blue cube' \(the run has 'a red ball'\) would be ignored"):
        generate(GenerateConfig(resume=run_dir, prompt="a blue cube"))
    assert main(["generate", "--resume", str(run_dir), "--steps", "3"]) == 2
    assert "--steps 3 is fewer than the 4 steps the checkpoint has done" in capsys.readouterr().err
    assert files_of(run_dir) == before
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 0
    assert "--steps 6 applied to the resumed run: it now ends at step 6 instead of 4" in capsys.readouterr().out
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 6


def test_resume_names_a_flag_it_would_ignore_even_while_another_process_runs_it(finished_run, tmp_path, capsys):
    """A flag the resumed run would ignore is the command's own mistake: it is named whether or not the run is in
    use elsewhere (it used to be hidden behind "in use by another run"); a valid resume of a run in use waits."""
    from splatdreamer.io.lock import RunLock

    run_dir = copy_run(finished_run, tmp_path)
    before = files_of(run_dir)
    with RunLock(run_dir):  # another `generate` holds the run
        assert main(["generate", "--resume", str(run_dir), "--seed", "5"]) == 2
        assert "--seed 5 (the run has 3) would be ignored; drop it" in capsys.readouterr().err
        assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 2
        assert "is in use by another splatdreamer run" in capsys.readouterr().err
    assert files_of(run_dir) == before
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 0
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]


def test_resume_steps_is_the_runs_new_length_and_may_shorten_an_unfinished_run(tiny_prior, tmp_path, capsys):
    """Found by a hostile-input pass: docs/usage.md said --steps on --resume lengthens a run, but it sets the run's
    length, which may also end an unfinished run earlier; only fewer steps than were done is refused."""
    run_dir = tmp_path / "run"

    def stop_at_4(progress):
        if progress.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="a checkpoint of step 4 was saved"):
        generate(small_config(tiny_prior, run_dir, steps=10), callback=stop_at_4)
    assert main(["generate", "--resume", str(run_dir), "--steps", "3"]) == 2
    assert ("--steps 3 is fewer than the 4 steps the checkpoint has done; --steps is the run's whole length, so give "
            "at least 4") in capsys.readouterr().err  # fmt: skip
    assert main(["generate", "--resume", str(run_dir), "--steps", "6"]) == 0
    assert "--steps 6 applied to the resumed run: it now ends at step 6 instead of 10" in capsys.readouterr().out
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 6
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 6


def test_resume_applies_a_typed_steps_that_equals_the_default(finished_run, tmp_path, capsys, monkeypatch):
    """Found by a hostile-input pass: `--resume RUN --steps 2000` kept the run's own 4 steps without a word, since
    2000 is GenerateConfig's default and read as not given. Without --steps the run keeps its length."""
    run_dir = copy_run(finished_run, tmp_path)
    assert main(["generate", "--resume", str(run_dir)]) == 0
    assert "applied to the resumed run" not in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 4
    assert GenerateConfig().steps == 2000
    interrupt_step(monkeypatch, at_call=2)  # within step 6: the 1996 more steps are not run here
    assert main(["generate", "--resume", str(run_dir), "--steps=2000"]) == 130
    assert "--steps 2000 applied to the resumed run: it now ends at step 2000 instead of 4" in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 2000
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5]


def test_resume_refuses_a_typed_default_that_differs_from_the_run(finished_run, tmp_path, capsys):
    """Found by a hostile-input pass: `--resume RUN --seed 0` continued a run of seed 3 at seed 3 without a word,
    since 0 is GenerateConfig's default and read as not given (only --steps was told apart). A typed flag that
    repeats the run's value is no conflict, whether or not it is the default."""
    run_dir = copy_run(finished_run, tmp_path)
    before = files_of(run_dir)
    assert GenerateConfig().seed == 0 and GenerateConfig().vsd.views_per_particle == 1
    assert main(["generate", "--resume", str(run_dir), "--seed", "0"]) == 2
    assert (f"--resume continues a run with its own config.json, so --seed 0 (the run has 3) would be ignored; drop "
            "it (only --steps may change: the run's new length, at least the steps done), or start a new run from it "
            f"with --config {run_dir / 'config.json'} and that flag") in capsys.readouterr().err  # fmt: skip
    assert main(["generate", "--resume", str(run_dir), "--vsd.views_per_particle=1", "--output.no-overwrite"]) == 2
    assert "so --vsd.views-per-particle 1 (the run has 2) would be ignored; drop it" in capsys.readouterr().err
    assert files_of(run_dir) == before and not (run_dir / LOCK).exists()
    # Found by a hostile-input pass: the run's cfg_scale None is VSD's 7.5, so typing 7.5 asks for what the run has.
    assert json.loads((run_dir / "config.json").read_text())["vsd"]["cfg_scale"] is None
    assert main(["generate", "--resume", str(run_dir), "--vsd.cfg-scale", "8"]) == 2
    assert "so --vsd.cfg-scale 8.0 (the run has None) would be ignored; drop it" in capsys.readouterr().err
    assert main(["generate", "--resume", str(run_dir), "--vsd.cfg-scale-vsd", "1"]) == 2  # the scale the run uses
    assert "so --vsd.cfg-scale-vsd 1.0 (the run has 7.5) would be ignored; drop it" in capsys.readouterr().err
    assert main(["generate", "--resume", str(run_dir), "--seed", "3", "--prompt", "a red ball", "--particles", "1",
                 "--vsd.cfg-scale", "7.5"]) == 0  # fmt: skip
    assert metric_steps(run_dir) == [1, 2, 3, 4]


def test_nan_before_any_checkpoint_says_so(tiny_prior, tmp_path):
    from splatdreamer.errors import NonFiniteError

    run_particles = []
    init = Generation.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        run_particles.extend(self.particles)

    def break_it(p):
        with torch.no_grad():
            run_particles[0]["means"][0] = float("nan")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Generation, "__init__", remember)
        with pytest.raises(NonFiniteError, match=r"no checkpoint was saved yet; --resume .* starts the run again"):
            generate(small_config(tiny_prior, tmp_path / "run"), callback=break_it)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def interrupt_step(monkeypatch, at_call):
    """Ctrl-C in the middle of a step (a second Ctrl-C does this) on the `at_call`-th step of this process."""
    step, calls = Generation.train_step, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Generation, "train_step", interrupted)


def test_interrupts_say_what_was_saved(tiny_prior, tmp_path, capsys, monkeypatch):
    save_json(small_config(tiny_prior, tmp_path / "run"), tmp_path / "c.json")

    def fail_init(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Generation, "__init__", fail_init)
        assert main(["generate", "--config", str(tmp_path / "c.json")]) == 130
    assert "interrupted; before the run started; nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    with monkeypatch.context() as m:
        interrupt_step(m, at_call=2)  # within step 2, before the first checkpoint (step 2)
        assert main(["generate", "--config", str(tmp_path / "c.json")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; no checkpoint was saved yet" in err and "checkpoint was saved;" not in err
    assert metric_steps(tmp_path / "run") == [1] and not (tmp_path / "run" / "checkpoint.pt").exists()

    with monkeypatch.context() as m:  # resumed without a checkpoint: from step 0, metrics not doubled
        interrupt_step(m, at_call=4)  # within step 4, after the checkpoint of step 2
        assert main(["generate", "--resume", str(tmp_path / "run")]) == 130
    assert f"interrupted; the checkpoint of step 2 in {tmp_path / 'run'} is intact" in capsys.readouterr().err
    assert metric_steps(tmp_path / "run") == [1, 2, 3]

    (tmp_path / "run" / ".checkpoint.pt.0badc0de.tmp").write_bytes(b"x" * 1000)  # a kill during a save
    assert main(["generate", "--resume", str(tmp_path / "run")]) == 0
    assert metric_steps(tmp_path / "run") == [1, 2, 3, 4]
    assert not list((tmp_path / "run").glob(".*.tmp")) and not (tmp_path / "run" / LOCK).exists()


def test_interrupt_at_a_step_boundary_saves_a_checkpoint(tiny_prior, tmp_path):
    def stop(p):
        if p.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=r"a checkpoint of step 3 was saved; continue with --resume"):
        generate(small_config(tiny_prior, tmp_path / "run"), callback=stop)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


REPRODUCE = """
import hashlib, sys, torch
from pathlib import Path
from test_generate import GenerateConfig, build_tiny_sd, generate, small_config
torch.set_num_threads(2)
prior = build_tiny_sd(Path(sys.argv[1]) / "prior", sample_size=16)
for name in ("a", "b"):
    result = generate(small_config(prior, Path(sys.argv[1]) / name, steps=2))
    particle = result.particles[0]
    digest = hashlib.sha256(b"".join(particle[k].detach().numpy().tobytes() for k in sorted(particle)))
    print("RESULT", torch.get_num_threads(), digest.hexdigest())
torch.set_num_threads(1)
generate(GenerateConfig(resume=Path(sys.argv[1]) / "a", steps=3))
"""


def test_cpu_run_is_reproducible_with_the_same_thread_count(tmp_path):
    """The claim of `--seed`: bit for bit with the same number of threads (here 2, in a fresh process; sums
    that threads split differently round differently, so 1 and 2 threads need not agree, and a resume
    with another thread count says so)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",  # no spinning
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", REPRODUCE, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2 and results[0][0] == "2" and results[0] == results[1], results
    assert "the run used 2 CPU threads and this process uses 1; the result will differ" in done.stdout


def test_make_folders_takes_a_parent_another_process_makes_meanwhile(tmp_path, monkeypatch):
    """Two `toy eval` processes on one --out-dir raced on the shared parent folders: the loser stopped with
    'cannot create the output folder ... (File exists)', and its clean-up could remove the winner's folders."""
    from pathlib import Path

    from splatdreamer.errors import RunFolderError
    from splatdreamer.generate import _make_folders

    shared, run_dir = tmp_path / "out" / "a_ball", tmp_path / "out" / "a_ball" / "sds-7.5" / "s3"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == shared and not self.exists():
            real_mkdir(self)  # the other process, between our check and our mkdir
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert _make_folders(run_dir) == [run_dir, run_dir.parent, tmp_path / "out"]  # not the other's a_ball
    assert run_dir.is_dir()

    # A failure after the race removes only what this call made, never the other process's folder.
    other = tmp_path / "out2" / "a_ball"
    target = other / "vsd-7.5" / "s0"

    def failing_mkdir(self, *args, **kwargs):
        if self == other and not self.exists():
            real_mkdir(self)
        if self == target:
            raise PermissionError(13, "Permission denied")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", failing_mkdir)
    with pytest.raises(RunFolderError, match="Permission denied"):
        _make_folders(target)
    assert other.is_dir() and not (other / "vsd-7.5").exists()


SIGTERM_RUN = """
import os, signal, sys, torch
from pathlib import Path
from test_generate import build_tiny_sd, generate, small_config
prior = build_tiny_sd(Path(sys.argv[1]) / "prior", sample_size=16)

def stop(p):
    if p.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `docker stop` would

try:
    generate(small_config(prior, Path(sys.argv[1]) / "run", steps=6), callback=stop)
except KeyboardInterrupt as e:
    print("STOPPED", e)
"""


def test_sigterm_stops_a_run_with_a_checkpoint_as_ctrl_c_does(tmp_path):
    """SIGTERM (timeout, kill, docker stop) used to kill a run at once: no checkpoint, a stale lock."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, "-c", SIGTERM_RUN, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "STOPPED a checkpoint of step 2 was saved; continue with --resume" in done.stdout
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "run" / LOCK).exists()


def test_the_cli_turns_sigterm_into_an_interrupt(tmp_path):
    """`batch` stops its runs on KeyboardInterrupt; the CLI makes SIGTERM and SIGHUP one."""
    code = (
        "import os, signal, time\n"
        "from splatdreamer.cli import _terminate_as_interrupt\n"
        "for sig in (signal.SIGTERM, signal.SIGHUP):\n"
        "    try:\n"
        "        with _terminate_as_interrupt():\n"
        "            os.kill(os.getpid(), sig)\n"
        "            time.sleep(10)\n"
        "    except KeyboardInterrupt as e:\n"
        "        print('INTERRUPTED', e)\n"
        "print('DEFAULT', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:3] == ["INTERRUPTED stopped by SIGTERM", "INTERRUPTED stopped by SIGHUP",
                                           "DEFAULT True"], (done.stdout, done.stderr[-1000:])  # fmt: skip


def test_generate_refuses_a_wrong_config_or_callback_before_writing(tiny_prior, tmp_path):
    """Found by a hostile-input pass: generate(dict(...)) failed with AttributeError deep inside, and
    callback=5 failed after step 1, leaving a half-written folder."""
    with pytest.raises(ConfigError, match="generate\\(\\) takes a GenerateConfig, got dict"):
        generate(dict(prompt="a red ball"))
    with pytest.raises(ConfigError, match="callback must be a function of one Progress, got int"):
        generate(small_config(tiny_prior, tmp_path / "run"), callback=5)
    with pytest.raises(ConfigError, match=r"given names config fields, e.g. given=\{'seed'\}; got the string 'seed'"):
        generate(small_config(tiny_prior, tmp_path / "run"), given="seed")  # would be the letters s, e, d
    assert not (tmp_path / "run").exists()


def test_a_failing_callback_leaves_a_checkpoint_of_the_finished_step(tiny_prior, tmp_path):
    """Found by a hostile-input pass: a callback that raised lost every step since the last periodic checkpoint."""
    def fail(p):
        if p.step == 3:
            raise ZeroDivisionError("the user's bug")

    with pytest.raises(ZeroDivisionError, match="the user's bug"):
        generate(small_config(tiny_prior, tmp_path / "run"), callback=fail)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "run" / LOCK).exists()
    generate(GenerateConfig(resume=tmp_path / "run"))  # and it continues from there
    assert metric_steps(tmp_path / "run") == [1, 2, 3, 4]


def test_the_colour_rate_decays_only_when_a_final_rate_is_set():
    """--splats.lr-sh0-final decays the colours' rate as the positions' (exponentially, lr_sh0 at step 0 to the
    final rate at the last step); unset, it stays lr_sh0. The Adam steps then move the colours by those rates."""
    from splatdreamer.config import SplatConfig, StrategyConfig
    from splatdreamer.optimize import ParticleOptimizer

    def rates(cfg: SplatConfig) -> list[float]:
        splats = random_ball(16, generator=torch.Generator().manual_seed(0))
        opt = ParticleOptimizer(splats, cfg, StrategyConfig(kind="none"), total_steps=10, scene_scale=0.5)
        seen = []
        for step in (0, 5, 10):
            splats["sh0"].grad = torch.ones_like(splats["sh0"])
            before = splats["sh0"].detach().clone()
            opt.step(step, {}, packed=False)
            seen.append(opt.optimizers["sh0"].param_groups[0]["lr"])
            assert (before - splats["sh0"]).min() > 0  # every colour moved against the gradient
        return seen

    assert rates(SplatConfig(lr_sh0=0.1, lr_sh0_final=0.001)) == pytest.approx([0.1, 0.01, 0.001])
    assert rates(SplatConfig(lr_sh0=0.1)) == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize(("phi_min_t", "calls"), [(None, 1), (999, 0)])
def test_phi_min_t_reaches_the_score(tiny_prior, tmp_path, monkeypatch, phi_min_t, calls):
    """--vsd.phi-min-t 999 (above t_max): the score never asks phi, so phi does not train either (without it,
    phi asked everywhere learns the renders)."""
    run, _ = _capturing_run(tiny_prior, tmp_path, monkeypatch, 2, vsd={"phi_min_t": phi_min_t})
    asked = []
    real = run.prior.eps_phi
    monkeypatch.setattr(run.prior, "eps_phi", lambda *a, **k: asked.append(1) or real(*a, **k))
    before = [p.detach().clone() for p in run.prior.phi_parameters()]
    run.train_step()
    assert len(asked) == calls
    assert any(not torch.equal(b, p) for b, p in zip(before, run.prior.phi_parameters())) == (calls > 0)


def test_the_loop_renders_at_the_size_a_toy_prior_saw_its_data_at(tiny_prior, tmp_path):
    """A toy prior trained on renders made at twice its size and averaged down (`toy train --data.supersample 2`,
    in its training.json) is handed renders made the same way: the loop renders at twice the prior's
    resolution unless --splats.resolution says otherwise; a prior without the record, or with a damaged one,
    gets renders at its own size."""
    prior_dir = tmp_path / "prior"
    shutil.copytree(tiny_prior, prior_dir)
    c = tiny_config(prior_dir, tmp_path / "run", steps=1, particles=1)

    def render_size(config) -> tuple[int, int]:
        run = Generation(config, tmp_path / f"r{len(list(tmp_path.iterdir()))}")
        run.train_step()
        assert run.last_cameras.width == run.resolution
        return run.resolution, run.prior.resolution

    size, own = render_size(c)
    assert size == own
    (prior_dir / "training.json").write_text(json.dumps({"config": {"data": {"supersample": 2}}}))
    assert render_size(c) == (2 * own, own)
    c.splats.resolution = 24
    assert render_size(c)[0] == 24
    c.splats.resolution = None
    (prior_dir / "training.json").write_text('{"config": {"data": {"supersample": "2"}}')
    assert render_size(c)[0] == own
