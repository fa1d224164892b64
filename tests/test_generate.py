"""The whole loop on a tiny random prior: files, densification, resume, and bad input."""

import json

import pytest
import torch

from splatdreamer.cli import main
from splatdreamer.config import GenerateConfig
from splatdreamer.generate import generate
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
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 4
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    monkeypatch.setattr(DiffusionPrior, "encode_images", encode)
    resumed = generate(GenerateConfig(resume=run_dir))
    assert len(resumed.files) == 2 and all(torch.isfinite(load_ply(p)["means"]).all() for p in resumed.files)


def test_nan_in_gaussians_stops_naming_them_and_keeps_the_last_checkpoint(tiny_prior, tmp_path):
    from splatdreamer.errors import NonFiniteError

    def break_particle_one(p):
        if p.step == 7:  # after the periodic checkpoint of step 6
            with torch.no_grad():
                run_particles[1]["scales"][5] = float("inf")

    run_particles = []
    config = tiny_config(tiny_prior, tmp_path / "run")
    from splatdreamer import generate as generate_module

    init = generate_module.Generation.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        run_particles.extend(self.particles)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(generate_module.Generation, "__init__", remember)
        message = r"particle 1 at step 7: \d+ Gaussians have a NaN or Inf in '\w+'.*checkpoint in .* is intact"
        with pytest.raises(NonFiniteError, match=message):
            generate(config, callback=break_particle_one)
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("*.ply"))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 6


# ------------------------------------------------------------------------------ the loop's scales and counts


def _capturing_run(tiny_prior, tmp_path, monkeypatch, particles, **changes):
    """A Generation whose renders and score gradients are recorded at every step."""
    import dataclasses

    from splatdreamer import generate as gen_module
    from splatdreamer import vsd
    from splatdreamer.generate import Generation

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
