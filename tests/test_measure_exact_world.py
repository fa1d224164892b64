"""scripts/measure_exact_world.py: the exact prior's guided samples grow with CFG as docs/benchmarks.md reports,
and the 3D runs against the exact prior score real particles, so the script cannot rot."""

import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from splatdreamer.errors import ConfigError
from splatdreamer.generate import resolve_prior_name
from splatdreamer.toy.data import ToyDataConfig, load_or_render, parse_object_scale, unconditional_weights
from splatdreamer.toy.objects import PROMPTS
from script_loader import load_script


def test_guidance_draws_the_exact_priors_red_ball_bigger_and_only_at_high_noise(tmp_path):
    script = load_script("measure_exact_world")
    data = load_or_render(ToyDataConfig(views_per_prompt=64), tmp_path)
    images = data.images.float() / 255
    mine = (data.prompt_index == PROMPTS.index("a red ball")).nonzero()[:, 0]
    scheduler = DDPMScheduler.from_pretrained(resolve_prior_name("toy"), subfolder="scheduler")
    weights = unconditional_weights(data, {})

    def size(cfg: float, cfg_max_t: int | None = None) -> float:
        return script.guided_size("a red ball", images, mine, weights, scheduler, cfg, cfg_max_t, 32)

    plain, guided, low_only = size(1.0), size(7.5), size(7.5, 800)
    assert abs(plain - 1.0) < 0.08, plain  # a perfect prior at CFG 1 draws its training images
    assert guided > plain + 0.08, (plain, guided)  # guidance picks close cameras
    assert abs(low_only - plain) < 0.04, (plain, low_only)  # ... and it does so above t = 800


def test_3d_runs_against_the_exact_prior_print_scored_rows(tmp_path, capsys):
    torch.manual_seed(0)
    load_script("measure_exact_world").main([
        "--prompts", "a red ball", "--methods", "vsd-7.5", "sds-7.5", "--seeds", "0", "--steps", "3",
        "--samples", "0", "--views-per-prompt", "16", "--data-dir", str(tmp_path),
    ])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a red ball |")]
    methods = [r.split("|")[2].strip() for r in rows]
    assert methods[:2] == ["vsd-7.5", "sds-7.5"], rows
    for row in rows:
        iou = float(re.split(r"\s*\|\s*", row)[4])
        assert 0.0 < iou <= 1.0, row


def test_view_sets_run_and_the_picture_shows_the_first_seeds_particles(tmp_path, capsys):
    """`--views` gives the exact prior a set per view label of the prompt's images; `--picture` writes the truth
    and the particles of the first seed (4 particles of 64 px beside the truth, under a label band)."""
    from PIL import Image

    torch.manual_seed(0)
    out = tmp_path / "picture.png"
    load_script("measure_exact_world").main([
        "--prompts", "a blue cube", "--methods", "sds-7.5", "--seeds", "1", "--steps", "3", "--samples", "0",
        "--views-per-prompt", "16", "--data-dir", str(tmp_path), "--views", "--picture", str(out),
    ])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a blue cube |")]
    assert rows and 0.0 < float(re.split(r"\s*\|\s*", rows[0])[4]) <= 1.0, rows
    picture = Image.open(out)
    assert picture.size[0] == 5 * 64 + 4 * 2 and picture.size[1] > 64, picture.size  # truth + 4 particles
    pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32))
    assert (pixels[..., 2] - pixels[..., 0] > 100).sum() > 500  # blue cubes drawn, not a blank sheet


def test_object_scale_text_parses_and_refuses_what_toy_train_refuses():
    assert parse_object_scale("blue cube=0.5, red ball=1.3") == {"blue cube": 0.5, "red ball": 1.3}
    assert parse_object_scale("") == {}
    for bad in ("purple ball=2", "blue cube=0", "blue cube=x", "blue cube"):
        with pytest.raises(ConfigError, match="takes factors in"):
            parse_object_scale(bad)


def test_an_unknown_prompt_is_refused_by_name_before_any_data_is_rendered(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("measure_exact_world").main(["--prompts", "a purple ball", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'a purple ball'" in err and "a red ball" in err, err  # names the bad prompt and the ones there are
    assert not any(tmp_path.iterdir())  # refused before rendering a dataset


def test_supersample_renders_at_twice_the_size_and_the_exact_prior_sees_their_mean(tmp_path, capsys, monkeypatch):
    """`--supersample 2`: the loop renders at 64 px and the exact prior (32-px sets of the supersampled dataset) is
    handed their 2 x 2 mean, as a `DiffusionPrior` is."""
    script = load_script("measure_exact_world")
    sizes, priors, sets = [], [], []

    class SpyGeneration(script.Generation):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            sizes.append(self.resolution)

    class SpyPrior(script.ExactPrior):
        def __init__(self, given, *args, **kwargs):
            super().__init__(given, *args, **kwargs)
            sets.append(given)
            priors.append(self)

    monkeypatch.setattr(script, "Generation", SpyGeneration)
    monkeypatch.setattr(script, "ExactPrior", SpyPrior)
    torch.manual_seed(0)
    script.main([
        "--prompts", "a blue cube", "--methods", "sds-7.5", "--seeds", "0", "--steps", "2", "--samples", "0",
        "--views-per-prompt", "16", "--data-dir", str(tmp_path), "--supersample", "2",
    ])  # fmt: skip
    assert sizes == [64]
    prior = priors[0]
    assert prior.resolution == 32
    big = torch.rand(2, 3, 64, 64)
    assert torch.allclose(prior.encode_images(big), torch.nn.functional.avg_pool2d(big, 2) * 2 - 1, atol=1e-6)
    supersampled = load_or_render(ToyDataConfig(views_per_prompt=16, supersample=2), tmp_path).images.float() / 255
    direct = load_or_render(ToyDataConfig(views_per_prompt=16), tmp_path).images.float() / 255
    assert torch.equal(sets[0][""][0], supersampled) and not torch.equal(supersampled, direct)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a blue cube |")]
    assert rows and 0.0 < float(re.split(r"\s*\|\s*", rows[0])[4]) <= 1.0, rows


@pytest.mark.parametrize("argv, named", [
    (["--supersample", "0"], "--supersample must be 1 or more"),
    (["--supersample", "2", "--prior", "toy"], "drop --supersample with --prior"),
])  # fmt: skip
def test_a_supersample_the_run_could_not_honour_is_refused_before_any_data_is_rendered(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit) as exit_info:
        load_script("measure_exact_world").main([*argv, "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the dataset was rendered
