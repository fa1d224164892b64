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
    from splatdreamer.generate import Generation

    init = Generation.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        run_particles.extend(self.particles)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Generation, "__init__", remember)
        message = r"particle 1 at step 7: \d+ Gaussians have a NaN or Inf in '\w+'.*checkpoint in .* is intact"
        with pytest.raises(NonFiniteError, match=message):
            generate(config, callback=break_particle_one)
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("*.ply"))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 6
