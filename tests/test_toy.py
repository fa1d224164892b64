"""The toy world: objects, rendered data, the tokenizer, training, and the shipped prior's samples."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

from splatdreamer.cameras import DEFAULT_RANGES, VIEW_LABELS, orbit, sample
from splatdreamer.errors import ConfigError, PriorLoadError
from splatdreamer.render import render
from splatdreamer.toy import measure
from splatdreamer.toy.data import (
    ToyDataConfig, cache_path, conditional_weights, draw_batch, load_or_render, object_names, render_dataset, render_views,
    training_prompts, unconditional_weights,
)  # fmt: skip
from splatdreamer.toy.exact import exact_eps, guided_samples
from splatdreamer.toy.model import ToyModelConfig, build, build_tokenizer, encode_prompts, load, save, toy_words
from splatdreamer.toy.objects import (
    BALL_COLORS, PALETTE, PROMPTS, ball_surface, cone_surface, cube_surface, quat_z_to, true_colors, variants,
)  # fmt: skip
from splatdreamer.toy.sample import check_prior, sample_images
from splatdreamer.toy import train as train_module
from splatdreamer.toy.train import (
    PosteriorTargets, ToyTrainConfig, diffusion_loss, guided_loss, loss_weights, train,
)  # fmt: skip

SHIPPED = Path(__file__).resolve().parents[1] / "splatdreamer" / "toy" / "prior"
TINY_MODEL = ToyModelConfig(resolution=16, block_out_channels=(16, 32), text_hidden_size=32, text_layers=1)


def view(azimuth: float, elevation: float = 0.0, size: int = 64, radius: float = 1.8, fovy: float = 45.0):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit(one(elevation), one(azimuth), one(radius), one(fovy), size, size)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_objects_fit_in_the_unit_ball_and_are_solid(prompt):
    for obj in variants(prompt):
        assert obj.splats["means"].norm(dim=-1).max() <= 0.5
        assert obj.splats["shN"].shape[1] == 0 and len(obj.splats["means"]) <= 3000
        front = render_views(obj, view(0.0))
        alpha = (1 - front).amax(dim=1) > 0.5  # white background: anything not white is object
        # The object covers its centre pixel block completely and stays well inside the frame.
        assert alpha[0, 28:36, 28:36].all()
        assert not alpha[0, :4].any() and not alpha[0, -4:].any()


def test_surfels_face_outwards_along_the_surface_normal():
    for means, normals in (ball_surface(), cube_surface()[:2], cone_surface()):
        assert torch.allclose(normals.norm(dim=-1), torch.ones(len(normals)), atol=1e-5)
        assert ((means * normals).sum(-1) > 0).all()  # convex shapes around the origin: normals point away
        w, x, y, z = quat_z_to(normals).unbind(-1)
        rotated_z = torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], dim=-1)
        assert torch.allclose(rotated_z, normals, atol=1e-5)  # the thin axis is the normal


def test_ball_silhouette_matches_the_projected_sphere():
    obj = variants("a red ball")[0]
    mask = render(obj.splats, view(30.0, 20.0), background=torch.ones(1, 3)).alpha[0, 0] > 0.5
    # A sphere of radius r seen from distance d projects to a disc of angular radius asin(r / d).
    f = 0.5 * 64 / math.tan(math.radians(45.0) / 2)
    disc = f * math.tan(math.asin(0.45 / 1.8))
    # Within 1.5 px: the rasteriser's anti-aliasing blur (0.3 px^2) and the surfels' extent widen the rim a little.
    assert abs(math.sqrt(mask.sum().item() / math.pi) - disc) < 1.5


@pytest.mark.parametrize("prompt", ["a red ball", "a blue cube", "a green cone"])
def test_single_colour_objects_render_their_colour(prompt):
    (obj,) = variants(prompt)
    rgb = render_views(obj, view(45.0, 20.0))
    mask = measure.foreground(rgb)
    colour = measure.mean_foreground_color(rgb, measure.interior(mask))[0]
    assert torch.allclose(colour, obj.colors[0], atol=0.03), (colour, obj.colors)


def test_two_tone_cube_shows_different_colours_from_front_and_side():
    (cube,) = variants("a two-tone cube")
    cameras = orbit(torch.zeros(2), torch.tensor([0.0, 90.0]), torch.full((2,), 1.8), torch.full((2,), 45.0), 64, 64)
    rgb = render_views(cube, cameras)
    mean = measure.mean_foreground_color(rgb, measure.foreground(rgb))
    palette = true_colors("a two-tone cube")
    _, nearest = measure.nearest_color(mean, palette)
    assert torch.allclose(palette[nearest[0]], torch.tensor(PALETTE["purple"]))  # front: the -Z face
    assert torch.allclose(palette[nearest[1]], torch.tensor(PALETTE["yellow"]))  # side: the +X face


def test_ambiguous_ball_has_four_distinct_colours_and_red_is_shared():
    balls = variants("a ball")
    colours = torch.cat([b.colors for b in balls])
    assert [b.name for b in balls] == [f"{c} ball" for c in BALL_COLORS]
    assert torch.cdist(colours, colours).add(torch.eye(4) * 9).min() > 0.5
    assert torch.equal(variants("a red ball")[0].colors[0], torch.tensor(PALETTE["red"]))


def test_dataset_shapes_labels_and_cache(tmp_path):
    config = ToyDataConfig(views_per_prompt=8, resolution=16, seed=3)
    data = load_or_render(config, tmp_path)
    n = 8 * len(PROMPTS)
    assert data.images.shape == (n, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.prompts()[:8] == ["a red ball"] * 8 and data.prompts()[-1] == "a ball"
    assert data.variant_index[-8:].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # "a ball" cycles its four colours
    cameras = sample(8, DEFAULT_RANGES, 16, 16, torch.Generator().manual_seed(3))  # the first prompt's draw
    assert data.labels[:8] == cameras.view_labels() and set(data.labels) <= set(VIEW_LABELS)
    assert (data.images[:, :, 0, 0] == 255).all()  # white background in the corners
    again = load_or_render(config, tmp_path)  # from the cache
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert torch.equal(again.images, data.images) and again.labels == data.labels


def test_supersampled_dataset_is_the_2x2_mean_of_renders_at_twice_the_size(tmp_path):
    """`--data.supersample 2` hands the prior what a generation rendering at twice its size hands it (the 2 x 2
    mean, which is also what `encode_images`' bilinear resize by exactly 2 gives), and shows the objects smaller
    than direct renders do (the rasterizer's 0.3-px low-pass is four times larger in area at the smaller size)."""
    config = ToyDataConfig(views_per_prompt=4, resolution=16, seed=3, supersample=2)
    data = load_or_render(config, tmp_path)
    assert data.images.shape == (4 * len(PROMPTS), 3, 16, 16)
    cameras = sample(4, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(3))  # the first prompt's draw
    big = render_views(variants("a red ball")[0], cameras)
    expected = (torch.nn.functional.avg_pool2d(big, 2) * 255).round().to(torch.uint8)
    assert (data.images[:4].int() - expected.int()).abs().max() <= 1
    resized = torch.nn.functional.interpolate(big, (16, 16), mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(resized, torch.nn.functional.avg_pool2d(big, 2), atol=1e-6)
    direct = load_or_render(dataclasses.replace(config, supersample=1), tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # its own cache
    area = lambda images: measure.foreground(images[:4].float() / 255).float().sum()  # noqa: E731
    assert area(direct.images) > 1.05 * area(data.images), (area(direct.images), area(data.images))


def test_check_prior_measures_a_supersampled_priors_samples_against_references_made_alike(monkeypatch):
    """A prior trained with `--data.supersample 2` draws its objects as averaged-down renders show them; against
    direct renders they would read 10-15 % small. Its own training images, passed off as its samples, are the
    right size only when check_prior makes its references the same way."""
    from splatdreamer.toy import sample as sample_module

    cameras = sample(16, DEFAULT_RANGES, 64, 64, torch.Generator().manual_seed(5))
    truth = torch.nn.functional.avg_pool2d(render_views(variants("a red ball")[0], cameras), 2)
    monkeypatch.setattr(sample_module, "sample_images", lambda parts, prompts, *a, **k: truth[: len(prompts)])
    parts = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=32)))
    size = lambda s: check_prior(parts, per_prompt=16, prompts=("a red ball",), supersample=s)[0].size.mean()  # noqa: E731
    assert abs(size(2) - 1.0) < 0.05 and size(1) < 0.95, (size(2), size(1))


def test_cond_object_scale_moves_one_colour_of_a_ball_and_its_own_prompt(tmp_path):
    """`--cond-object-scale "green ball" 0.5` halves the green ball's captioned draws under both prompts that show
    it ("a green ball" and "a ball"), leaves the other colours of "a ball" alike, and composes with --prompt-scale."""
    data = load_or_render(ToyDataConfig(views_per_prompt=8, resolution=16, seed=3), tmp_path)
    names = object_names(data)
    weights = conditional_weights(data, {"a ball": 2.0}, {"green ball": 0.5})
    g = torch.Generator().manual_seed(0)
    index = torch.multinomial(weights, 40000, replacement=True, generator=g)
    ball = data.prompt_index[index] == PROMPTS.index("a ball")
    colours = Counter(names[i] for i in index[ball].tolist())
    # "a ball": 2 views per colour here, green at half weight -> shares 1:1:0.5:1 of 3.5
    assert abs(colours["green ball"] / ball.sum().item() - 0.5 / 3.5) < 0.015, colours
    assert abs(colours["red ball"] / ball.sum().item() - 1 / 3.5) < 0.015, colours
    own = data.prompt_index[index] == PROMPTS.index("a green ball")
    red = data.prompt_index[index] == PROMPTS.index("a red ball")
    assert abs(own.sum().item() / red.sum().item() - 0.5) < 0.04  # the green ball's own prompt is halved too
    # "a ball"'s total: 8 images at 2 x (1 + 1 + 0.5 + 1) / 4 = 1.75 per image against 1 for "a red ball"
    assert abs(ball.sum().item() / red.sum().item() - 1.75) < 0.08
    with pytest.raises(ConfigError, match="object_scale"):
        conditional_weights(data, {}, {"purple ball": 1.0})


def test_unconditional_examples_show_every_object_equally_often(tmp_path):
    """Guidance weighs samples by p(x | y) / p(x): an object commoner under p(x) (each ball, shared between
    "a ball" and its own prompt) would be suppressed. The empty-prompt draws give each distinct object the same share."""
    data = load_or_render(ToyDataConfig(views_per_prompt=8, resolution=16, seed=3), tmp_path)
    names = object_names(data)
    assert names.count("red ball") == 8 + 2 and names.count("blue cube") == 8  # uniform draws: 5 balls per 4 cubes
    weights = unconditional_weights(data)
    g = torch.Generator().manual_seed(0)
    uncond, cond = [], []
    for _ in range(300):
        index, prompts = draw_batch(data, 64, 0.15, weights, g)
        for i, p in zip(index.tolist(), prompts):
            (uncond if p == "" else cond).append(i)
    objects = sorted(set(names))
    share = torch.tensor([[names[i] for i in uncond].count(o) for o in objects]) / len(uncond)
    # ~2900 draws: sd 0.0065 per share; uniform draws over images would give red 0.25
    assert len(objects) == 7 and (share - 1 / 7).abs().max() < 0.03, dict(zip(objects, share.tolist()))
    assert abs(len(uncond) / (len(uncond) + len(cond)) - 0.15) < 0.01
    per_prompt = torch.bincount(data.prompt_index[cond], minlength=len(PROMPTS)) / len(cond)
    assert (per_prompt - 1 / len(PROMPTS)).abs().max() < 0.015  # conditional draws stay uniform over images


def test_prompt_and_object_scales_reweight_the_draws(tmp_path):
    """`--prompt-scale "a ball" 3` triples the ambiguous prompt's captioned share; `--uncond-object-scale` moves
    the empty-prompt shares by its factors; unknown names and non-positive factors are refused up front."""
    data = load_or_render(ToyDataConfig(views_per_prompt=8, resolution=16, seed=3), tmp_path)
    names = object_names(data)
    cond = conditional_weights(data, {"a ball": 3.0})
    uncond = unconditional_weights(data, {"blue cube": 0.5, "red ball": 2.0})
    g = torch.Generator().manual_seed(0)
    captioned, empty = [], []
    for _ in range(300):
        index, prompts = draw_batch(data, 64, 0.15, uncond, g, cond)
        for i, p in zip(index.tolist(), prompts):
            (empty if p == "" else captioned).append(i)
    ball = PROMPTS.index("a ball")
    share = (data.prompt_index[captioned] == ball).float().mean().item()
    assert abs(share - 3 / (len(PROMPTS) + 2)) < 0.02, share  # 3 of 10 parts; unscaled it is 1 of 8
    drawn = [names[i] for i in empty]
    # shares 1:1:...:0.5 (blue cube):2 (red ball) over 7 objects sum to 7.5
    assert abs(drawn.count("red ball") / len(drawn) - 2 / 7.5) < 0.03
    assert abs(drawn.count("blue cube") / len(drawn) - 0.5 / 7.5) < 0.02
    assert abs(drawn.count("green cone") / len(drawn) - 1 / 7.5) < 0.03
    with pytest.raises(ConfigError, match="prompt_scale"):
        ToyTrainConfig(prompt_scale={"a bal": 2.0})
    with pytest.raises(ConfigError, match="cond_object_scale"):
        ToyTrainConfig(cond_object_scale={"green bal": 0.6})
    with pytest.raises(ConfigError, match="uncond_object_scale"):
        ToyTrainConfig(uncond_object_scale={"blue cube": 0.0})
    with pytest.raises(ConfigError, match="object_scale"):
        unconditional_weights(data, {"purple ball": 1.0})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
        ({"lr": float("inf")}, "--lr must be a finite number, got inf"),
        ({"lr": -1e-3}, "--lr must be >= 0, got -0.001"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite number"),
        ({"grad_clip": -1.0}, "--grad-clip must be positive, got -1.0"),
        ({"ema_decay": 2.0}, r"--ema-decay must be in \[0, 1\), got 2.0"),
        ({"ema_decay": 1.0}, r"--ema-decay must be in \[0, 1\), got 1.0"),
        ({"p_uncond": 1.0}, r"--p-uncond must be in \[0, 1\), got 1.0"),
        ({"max_loss_weight": float("nan")}, "--max-loss-weight must be a finite number"),
        ({"max_loss_weight": 0.5}, "--max-loss-weight must be >= 1, got 0.5"),
        ({"warmup_steps": -5}, "--warmup-steps must be >= 0"),
        ({"guided_weight": -1.0}, "--guided-weight must be >= 0, got -1.0"),
        ({"guided_cfg": 0.5}, "--guided-cfg must be >= 1, got 0.5"),
        ({"guided_min_t": 1000}, "--guided-min-t 1000 leaves no timestep below the schedule's 1000"),
        ({"guided_batch": 0}, "--guided-batch must be positive"),
        ({"guided_low_batch": -1}, "--guided-low-batch must be >= 0, got -1"),
        ({"cross_prompt_batch": -2}, "--cross-prompt-batch must be >= 0, got -2"),
        ({"cross_prompt_min_t": 1000}, "--cross-prompt-min-t 1000 leaves no timestep below the schedule's 1000"),
        ({"guided_low_batch": 8, "guided_weight": 1.0, "guided_min_t": 0},
         "--guided-low-batch 8 draws timesteps below --guided-min-t, which is 0"),
        ({"guided_low_batch": 8}, "--guided-low-batch 8 adds examples to the guided loss, which is off"),
        ({"cross_prompt_pairs": "same-shape"}, "--cross-prompt-pairs same-shape chooses the cross-prompt loss's pairs"),
        ({"cross_prompt_pairs": "shape", "cross_prompt_batch": 4},
         "--cross-prompt-pairs must be one of 'all', 'same-shape', got 'shape'"),
        ({"keep_init_below_t": 850}, "--keep-init-below-t 850 keeps the starting prior's predictions, and there is none"),
        ({"keep_init_below_t": -1}, "--keep-init-below-t must be >= 0, got -1"),
        ({"steps": "5"}, "--steps must be a whole number, got '5'"),
        ({"save_every": 0}, "--save-every must be positive"),
        ({"log_every": 0}, "--log-every must be positive"),
        ({"num_threads": 0}, "--num-threads must be positive"),
        ({"prompt_scale": {"a ball": "3"}}, r"--prompt-scale\['a ball'\] must be a number"),
        ({"uncond_object_scale": {"blue cube": float("inf")}}, r"--uncond-object-scale\['blue cube'\] must be a finite"),
        ({"data": ToyDataConfig(chunk=0)}, "--data.chunk must be positive"),
        ({"model": ToyModelConfig(block_out_channels=(32, 0))}, "--model.block-out-channels must be positive"),
        ({"model": ToyModelConfig(block_out_channels=())}, "--model.block-out-channels needs one or more"),
        ({"model": ToyModelConfig(beta_schedule="bogus")}, "unknown --model.beta-schedule 'bogus'; choose one of"),
        ({"prompt_scale": {"a ball": 1e308, "a red ball": 1e308}}, r"prompt_scale takes factors in \(0, 1e\+06\]"),
        ({"data": ToyDataConfig(backend="gsplat")}, "--data.backend gsplat: the toy data is rendered on the CPU"),
    ],
)
def test_train_config_refuses_numbers_that_would_crash_or_save_nan_weights(change, message):
    """Found by a hostile-input pass: each failed deep in torch or diffusers, or (lr inf) saved NaN weights."""
    from splatdreamer.toy.train import ToyTrainConfig

    with pytest.raises(ConfigError, match=message):
        ToyTrainConfig(**change)


def test_exact_denoiser_recovers_the_data_and_guidance_favours_what_the_empty_prompt_lacks():
    """The exact denoiser of a weighted image set samples its images in proportion to the weights, and under
    guidance an image rarer under the empty prompt's weights gains by (p(x | y) / p(x))^(w - 1)."""
    from diffusers import DDPMScheduler

    red = torch.tensor([0.7, -0.8, -0.8])[:, None, None].expand(3, 8, 8)
    blue = torch.tensor([-0.8, -0.5, 0.7])[:, None, None].expand(3, 8, 8)
    images = torch.stack([red, blue])
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    cond = exact_eps(images, torch.tensor([1.0, 1.0]), scheduler.alphas_cumprod)
    uncond = exact_eps(images, torch.tensor([1.0, 3.0]), scheduler.alphas_cumprod)  # blue commoner without a prompt

    def red_share(w: float) -> float:
        x = guided_samples(cond, uncond, scheduler, (400, 3, 8, 8), w, 25, torch.Generator().manual_seed(0))
        assert ((x - (images[0] + 1) / 2).abs().amax((1, 2, 3)) < 0.02).logical_or(
            (x - (images[1] + 1) / 2).abs().amax((1, 2, 3)) < 0.02
        ).all()  # every sample is one of the two images
        return (x[:, 0].mean((1, 2)) > 0.5).float().mean().item()

    assert abs(red_share(1.0) - 0.5) < 0.08  # CFG 1: the prompt's own split
    # In the clean limit red : blue = 3^(w-1) : 1, red share 0.75 at w = 2 and 0.9 at w = 3 (measured: 0.72, 0.83;
    # the noised images overlap, which softens the ratio where the choice is made)
    two, three = red_share(2.0), red_share(3.0)
    assert 0.65 < two < three and three > 0.78, (two, three)


def test_training_prompts_take_the_three_forms():
    data = render_dataset(ToyDataConfig(views_per_prompt=2, resolution=8))
    prompts = training_prompts(data, torch.arange(len(data)).repeat(50), 0.2, torch.Generator().manual_seed(0))
    empty = sum(p == "" for p in prompts) / len(prompts)
    assert 0.12 < empty < 0.28
    assert set(prompts) == {""} | set(PROMPTS) | {f"{p}, {l} view" for p, l in zip(data.prompts(), data.labels)}


def test_tokenizer_gives_each_toy_word_one_token_and_round_trips():
    tok = build_tokenizer(16)
    for word in toy_words():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    for prompt in PROMPTS:
        text = f"{prompt}, overhead view"
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) <= 16
        assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",").replace(" - ", "-") == text
    assert tok("a purple ball").input_ids.count(tok.unk_token_id) >= 1  # unknown words are not silently split


def test_save_and_load_keep_the_stable_diffusion_layout(tmp_path):
    parts = build(TINY_MODEL)
    save(parts, tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert set(index) >= {"unet", "text_encoder", "tokenizer", "scheduler"} and "vae" not in index
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "scheduler" / "scheduler_config.json").exists()
    tokenizer_dir = tmp_path / "tokenizer"  # the files transformers 4's slow tokenizer reads
    from_files = CLIPTokenizer(vocab=str(tokenizer_dir / "vocab.json"), merges=str(tokenizer_dir / "merges.txt"))
    assert from_files("a two-tone cube, side view").input_ids == parts.tokenizer("a two-tone cube, side view").input_ids
    back = load(tmp_path)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        a = parts.unet(x, t, encoder_hidden_states=encode_prompts(parts, ["a ball", ""])).sample
        b = back.unet(x, t, encoder_hidden_states=encode_prompts(back, ["a ball", ""])).sample
    assert torch.allclose(a, b, atol=1e-5)
    assert back.tokenizer.model_max_length == 16 == back.text_encoder.config.max_position_embeddings


def test_measures_on_hand_made_images():
    images = torch.ones(2, 3, 4, 4)
    images[0, :, :2, :2] = torch.tensor([0.85, 0.12, 0.10])[:, None, None]  # red square, top left
    images[1, :, 2:, :] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # blue bar, bottom half
    mask = measure.foreground(images)
    assert mask.sum(dim=(1, 2)).tolist() == [4, 8]
    reference = torch.zeros(1, 4, 4, dtype=torch.bool)
    reference[0, :2, :] = True  # top half
    assert measure.best_iou(mask, reference).tolist() == pytest.approx([0.5, 0.0])
    palette = torch.tensor([PALETTE["red"], PALETTE["blue"]])
    error, nearest = measure.nearest_color(measure.mean_foreground_color(images, mask), palette)
    assert nearest.tolist() == [0, 1] and error[0] < 1e-6
    assert measure.pixel_color_error(images, mask, palette)[1] == pytest.approx(
        torch.linalg.vector_norm(torch.tensor([0.0, 0.0, 1.0]) - palette[1]).item()
    )


def test_size_ratio_is_one_for_the_truth_and_grows_with_the_object():
    from splatdreamer.splats import detached_copy

    cone = variants("a green cone")[0]
    cameras = sample(48, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(1))
    references = measure.foreground(render_views(cone, cameras))
    assert measure.size_ratio(references, references).mean().item() == pytest.approx(1.0)
    bigger = detached_copy(cone.splats)
    bigger["means"] = bigger["means"] * 1.25
    bigger["scales"] = bigger["scales"] + math.log(1.25)
    with torch.no_grad():
        drawn = render(bigger, cameras, background=torch.ones(len(cameras), 3)).rgb.clamp(0, 1)
    ratio = measure.size_ratio(measure.foreground(drawn), references).mean().item()
    assert 1.25**2 * 0.9 < ratio < 1.25**2 * 1.1, ratio  # area grows with the square of the scale


def test_train_config_rejects_mismatched_resolutions():
    with pytest.raises(ConfigError):
        ToyTrainConfig(data=ToyDataConfig(resolution=16), model=ToyModelConfig(resolution=32))


def test_a_short_training_run_lowers_the_loss(tmp_path, monkeypatch):
    argv = ["splatdreamer", "toy", "train", "--uncond-object-scale", "blue cube", "0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    config = ToyTrainConfig(
        out_dir=tmp_path / "prior", data_dir=tmp_path / "data", data=ToyDataConfig(views_per_prompt=8, resolution=16),
        model=TINY_MODEL, steps=60, batch_size=16, warmup_steps=5, save_every=30, log_every=30, ema_decay=0.9,
    )  # fmt: skip
    result = train(config)
    assert len(result.losses) == 60
    assert sum(result.losses[-10:]) / 10 < 0.6 * sum(result.losses[:5]) / 5
    trained = load(tmp_path / "prior")
    meta = json.loads((tmp_path / "prior" / "training.json").read_text())
    assert meta["step"] == 60 and not (tmp_path / "prior.tmp").exists()
    assert shlex.split(meta["command"]) == argv  # quoted, so a prompt with spaces pastes back as typed
    # The saved (EMA) weights fit the data better than the initialisation on a fixed batch.
    data = load_or_render(config.data, config.data_dir)
    images = data.images[:32].float() / 127.5 - 1
    with torch.no_grad():
        before = diffusion_loss(build(TINY_MODEL), images, data.prompts()[:32], torch.Generator().manual_seed(0))
        after = diffusion_loss(trained, images, data.prompts()[:32], torch.Generator().manual_seed(0))
    assert after < 0.7 * before


def test_snr_plus_one_weighting_scales_each_example_by_its_capped_weight():
    parts = build(TINY_MODEL, seed=0)
    abar = parts.scheduler.alphas_cumprod
    w = loss_weights(abar, torch.tensor([0, 500, 900, 999]), "snr+1", 20.0)
    assert w[0] == pytest.approx(1.0, abs=1e-3) and w[1] == pytest.approx(1 / abar[500].item(), rel=1e-5)
    assert w[2:].tolist() == [20.0, 20.0]  # 1 / abar passes the cap near t = 850 on the cosine schedule
    assert loss_weights(abar, torch.tensor([0, 999]), "epsilon", 20.0).tolist() == [1.0, 1.0]
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    seen = set()
    with torch.no_grad():
        for seed in range(6):  # same seed: the same t and noise, so the ratio is that example's weight
            t = torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(seed))
            plain = diffusion_loss(parts, image, ["a ball"], torch.Generator().manual_seed(seed))
            weighted = diffusion_loss(parts, image, ["a ball"], torch.Generator().manual_seed(seed), "snr+1", 5.0)
            expected = min(1 / abar[t].item(), 5.0)
            assert (weighted / plain).item() == pytest.approx(expected, rel=1e-4), (seed, t)
            seen.add(round(expected, 3))
    assert len(seen) > 1  # the seeds reached different weights


def test_posterior_targets_are_the_exact_denoiser_of_what_each_prompt_was_trained_on():
    """The target of "a ball" is the exact denoiser of the ball images, of "a ball, front view" that of its front
    views, of "" that of every image under the empty prompt's weights; it differs from the drawn noise where
    the image is in doubt (high t) and is the drawn noise where it is not (low t)."""
    data = render_dataset(ToyDataConfig(views_per_prompt=12, resolution=8))
    images = data.images.float() / 127.5 - 1
    weights = unconditional_weights(data, {"blue cube": 0.5, "red ball": 1.3})
    targets = PosteriorTargets(data, images, weights)
    abar = build(dataclasses.replace(TINY_MODEL, resolution=8)).scheduler.alphas_cumprod
    ball = (data.prompt_index == PROMPTS.index("a ball")).nonzero()[:, 0]
    labelled = [(p, i, data.labels[i]) for i, p in enumerate(data.prompts())]
    count = Counter((p, l) for p, _, l in labelled)
    prompt, label = next(k for k, n in count.items() if 3 <= n < 12)  # a proper subset of the prompt's images
    view = torch.tensor([i for p, i, l in labelled if (p, l) == (prompt, label)])
    cases = [("a ball", ball, torch.ones(len(ball))), (f"{prompt}, {label} view", view, torch.ones(len(view))),
             ("", torch.arange(len(data)), weights)]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for prompt, index, w in cases:
        x0 = images[index[:3]]
        for step, differs in ((900, True), (5, False)):
            t = torch.full((3,), step)
            noise = torch.randn(x0.shape, generator=g)
            noisy = torch.sqrt(abar[t])[:, None, None, None] * x0 + torch.sqrt(1 - abar[t])[:, None, None, None] * noise
            got = targets.eps(noisy, t, [prompt] * 3, abar)
            want = exact_eps(images[index], w, abar)(noisy, step)
            assert torch.allclose(got, want, atol=1e-5), (prompt, step)
            gap = (got - noise).abs().amax().item()
            assert (gap > 0.05) if differs else (gap < 1e-3), (prompt, step, gap)
    # A mixed batch gets each row's own reference set.
    t = torch.tensor([900, 900])
    noisy = torch.randn(2, 3, 8, 8, generator=g)
    mixed = targets.eps(noisy, t, ["a ball", ""], abar)
    assert torch.allclose(mixed[1:], targets.eps(noisy[1:], t[1:], [""], abar))
    assert not torch.allclose(mixed[:1], targets.eps(noisy[:1], t[:1], [""], abar), atol=1e-3)


def test_training_uses_the_posterior_target_only_when_asked(tmp_path, monkeypatch):
    calls = []
    real = train_module.PosteriorTargets.eps
    monkeypatch.setattr(train_module.PosteriorTargets, "eps", lambda self, *a: calls.append(1) or real(self, *a))
    common = dict(data_dir=tmp_path / "data", data=ToyDataConfig(views_per_prompt=4, resolution=16), model=TINY_MODEL,
                  steps=3, batch_size=4, warmup_steps=1, log_every=1)  # fmt: skip
    plain = train(ToyTrainConfig(out_dir=tmp_path / "a", **common))
    assert calls == []
    posterior = train(ToyTrainConfig(out_dir=tmp_path / "b", target="posterior", **common))
    assert len(calls) == 3
    assert plain.losses != posterior.losses  # same seed, same draws: only the target differs
    assert json.loads((tmp_path / "b" / "training.json").read_text())["config"]["target"] == "posterior"
    calls.clear()
    guided = train(ToyTrainConfig(out_dir=tmp_path / "c", guided_weight=1.0, guided_batch=2, **common))
    assert len(calls) == 6  # the guided loss's exact targets, prompt and empty, each step; the plain target stays
    assert guided.losses != plain.losses
    calls.clear()
    both = train(ToyTrainConfig(out_dir=tmp_path / "d", guided_weight=1.0, guided_batch=2, guided_low_batch=2, **common))
    assert len(calls) == 12  # and the low-noise guided examples' two targets, each step
    assert both.losses[0] > guided.losses[0]  # same draws first, then a second guided loss is added
    calls.clear()
    cross = train(ToyTrainConfig(out_dir=tmp_path / "e", cross_prompt_batch=2, **common))
    assert len(calls) == 3  # one exact target of the cross-prompt examples per step; the plain target is the noise
    assert cross.losses[0] > plain.losses[0]
    calls.clear()
    shaped = train(
        ToyTrainConfig(out_dir=tmp_path / "f", cross_prompt_batch=2, cross_prompt_pairs="same-shape", **common)
    )
    assert len(calls) == 3
    assert shaped.losses != cross.losses  # the same plain batches, other cross-prompt pairs
    assert json.loads((tmp_path / "f" / "training.json").read_text())["config"]["cross_prompt_pairs"] == "same-shape"


def test_guided_loss_weights_the_cond_minus_empty_error_by_the_guidance_scale():
    """The guided loss fits eps_u + s (eps_c - eps_u) to the same combination of the exact targets, at t >= min_t:
    zero for the exact denoiser, s^2 d^2 for an error d on the prompt's prediction alone, (s - 1)^2 d^2 for one
    on the empty prompt's alone."""
    data = render_dataset(ToyDataConfig(views_per_prompt=12, resolution=8))
    images = data.images.float() / 127.5 - 1
    targets = PosteriorTargets(data, images, unconditional_weights(data, {}))
    parts = build(dataclasses.replace(TINY_MODEL, resolution=8))
    abar = parts.scheduler.alphas_cumprod
    prompts = ["a ball", "a red ball, front view", "a blue cube"]
    seen_t = []

    def fake_unet(offset_cond: float, offset_empty: float):
        def unet(x, t, encoder_hidden_states):
            seen_t.append(t)
            exact = targets.eps(x, t, [*prompts, *[""] * 3], abar)
            exact[:3] += offset_cond
            exact[3:] += offset_empty
            return SimpleNamespace(sample=exact)

        return unet

    for cond, empty, expected in ((0.0, 0.0, 0.0), (0.1, 0.0, (7.5 * 0.1) ** 2), (0.0, 0.1, (6.5 * 0.1) ** 2)):
        parts.unet = fake_unet(cond, empty)
        got = guided_loss(parts, images[:3], prompts, torch.Generator().manual_seed(0), targets, 7.5, 900).item()
        assert got == pytest.approx(expected, abs=1e-6), (cond, empty)
    assert all(len(t) == 6 and t.min() >= 900 and torch.equal(t[:3], t[3:]) for t in seen_t)
    seen_t.clear()  # the low-noise examples of --guided-low-batch: t in [0, max_t), weighted the same way
    parts.unet = fake_unet(0.1, 0.0)
    got = guided_loss(parts, images[:3], prompts, torch.Generator().manual_seed(0), targets, 7.5, 0, 50).item()
    assert got == pytest.approx((7.5 * 0.1) ** 2, abs=1e-6)
    assert len(seen_t) == 1 and seen_t[0].max() < 50 and seen_t[0].min() >= 0


def test_cross_prompt_loss_asks_each_image_under_another_prompt_for_the_exact_target(monkeypatch):
    """Each image is noised at t >= min_t and asked under a captioned prompt other than its own; the target is
    that prompt's exact E[eps | x_t, y]: zero loss for the exact denoiser, d^2 for an error d."""
    data = render_dataset(ToyDataConfig(views_per_prompt=6, resolution=8))
    images = data.images.float() / 127.5 - 1
    targets = PosteriorTargets(data, images, unconditional_weights(data, {}))
    parts = build(dataclasses.replace(TINY_MODEL, resolution=8))
    abar = parts.scheduler.alphas_cumprod
    monkeypatch.setattr(train_module, "encode_prompts", lambda parts, prompts: list(prompts))  # the unet sees them
    seen = []

    def fake_unet(offset: float):
        def unet(x, t, encoder_hidden_states):
            seen.append((t, encoder_hidden_states))
            return SimpleNamespace(sample=targets.eps(x, t, encoder_hidden_states, abar) + offset)

        return unet

    index = torch.arange(0, len(data), 3)
    own = data.prompt_index[index]
    for offset, expected in ((0.0, 0.0), (0.1, 0.01)):
        parts.unet = fake_unet(offset)
        got = train_module.cross_prompt_loss(parts, images[index], own, torch.Generator().manual_seed(0), targets, 700)
        assert got.item() == pytest.approx(expected, abs=1e-6)
    for t, prompts in seen:
        assert t.min() >= 700
        assert all(p != PROMPTS[int(k)] and p in PROMPTS for p, k in zip(prompts, own))
    assert len({p for _, prompts in seen for p in prompts}) == len(PROMPTS)  # every prompt is asked
    seen.clear()  # --cross-prompt-pairs same-shape: a ball only under ball prompts, a cube only under the other cube
    partners = train_module.cross_partners("same-shape")
    index = torch.arange(len(data)).repeat(4)
    index = index[torch.tensor([bool(partners[int(k)]) for k in data.prompt_index[index]])]
    got = train_module.cross_prompt_loss(
        parts, images[index], data.prompt_index[index], torch.Generator().manual_seed(1), targets, 700, partners
    )
    assert got.item() == pytest.approx(0.01, abs=1e-6)
    (_, prompts), = seen
    asked = {}
    for p, k in zip(prompts, data.prompt_index[index]):
        asked.setdefault(PROMPTS[int(k)], set()).add(p)
    balls = {"a red ball", "a yellow ball", "a green ball", "a blue ball", "a ball"}
    assert asked == {
        **{b: balls - {b} for b in balls}, "a blue cube": {"a two-tone cube"}, "a two-tone cube": {"a blue cube"}
    }


def test_cross_partners_pair_prompts_by_shape_or_all():
    """"all" pairs each prompt with every other one; "same-shape" with those of its shape only (the cone with
    none), read from the objects themselves."""
    every = train_module.cross_partners("all")
    assert all(sorted(every[i]) == [j for j in range(len(PROMPTS)) if j != i] for i in range(len(PROMPTS)))
    same = train_module.cross_partners("same-shape")
    named = {PROMPTS[i]: {PROMPTS[j] for j in same[i]} for i in range(len(PROMPTS))}
    assert named["a green cone"] == set()
    assert named["a blue cube"] == {"a two-tone cube"}
    assert named["a ball"] == {"a red ball", "a yellow ball", "a green ball", "a blue ball"}
    assert named["a red ball"] == {"a yellow ball", "a green ball", "a blue ball", "a ball"}


def test_keep_init_below_t_fits_the_teachers_own_prediction_there_and_the_plain_target_above():
    """Below teacher_below_t the plain loss's target is the teacher's prediction: a teacher that is the model itself
    costs nothing there, so the loss is the plain loss of the examples at or above the threshold alone."""
    parts = build(dataclasses.replace(TINY_MODEL, resolution=8))
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prompts = ["a ball", "a red ball", "", "a blue cube"] * 2

    def loss(**teacher):
        with torch.no_grad():
            return diffusion_loss(parts, images, prompts, torch.Generator().manual_seed(0), **teacher).item()

    t = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0))  # the draws diffusion_loss makes
    threshold = int(t.sort().values[4])  # 4 examples below, 4 at or above
    per_example = []
    for i in range(8):  # each example's plain loss, from the same noise
        g = torch.Generator().manual_seed(0)
        t_all, noise = torch.randint(0, 1000, (8,), generator=g), torch.randn(images.shape, generator=g)
        noisy = parts.scheduler.add_noise(images, noise, t_all)
        with torch.no_grad():
            context = encode_prompts(parts, [prompts[i]])
            pred = parts.unet(noisy[i : i + 1], t_all[i : i + 1], encoder_hidden_states=context).sample
        per_example.append(((pred - noise[i : i + 1]) ** 2).mean().item())
    kept = sum(e for e, ti in zip(per_example, t.tolist()) if ti >= threshold) / 8
    assert loss() == pytest.approx(sum(per_example) / 8, rel=1e-4)
    assert loss(teacher=parts, teacher_below_t=threshold) == pytest.approx(kept, rel=1e-4)
    assert loss(teacher=parts, teacher_below_t=1000) == pytest.approx(0.0, abs=1e-10)
    assert loss(teacher=parts, teacher_below_t=0) == pytest.approx(loss(), rel=1e-6)
    other = build(dataclasses.replace(TINY_MODEL, resolution=8), seed=3)  # another teacher: a real target again
    held, harder = loss(teacher=other, teacher_below_t=threshold), loss(teacher=other, teacher_below_t=threshold,
                                                                         teacher_weight=3.0)  # fmt: skip
    assert harder - kept == pytest.approx(3 * (held - kept), rel=1e-4)  # only the examples below count 3 times
    assert loss(teacher=other, teacher_below_t=1000) > 1e-4


def test_train_refuses_an_out_dir_it_would_wipe_and_sizes_that_cannot_build_before_any_data(tmp_path, monkeypatch):
    """Found by a hostile-input pass: every save replaces --out-dir whole, so a folder of the user's (or the current
    folder) was deleted with exit 0; sizes diffusers rejects failed with its traceback after the data had loaded."""
    monkeypatch.chdir(tmp_path)
    rendered = []
    monkeypatch.setattr(train_module, "load_or_render", lambda *a: rendered.append(a))
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    (tmp_path / "afile").write_text("keep")
    common = dict(data_dir=tmp_path / "data", data=ToyDataConfig(views_per_prompt=1, resolution=16), model=TINY_MODEL,
                  steps=1, batch_size=2)  # fmt: skip
    for out, message in [
        (mine, "mine holds notes.txt, sub, which are not a toy prior's"), (Path("."), "names no folder of its own"),
        (tmp_path, "is the current folder or holds it"), (tmp_path / "afile", "afile is a file"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            train(ToyTrainConfig(out_dir=out, **common))
    for model, message in [
        (dataclasses.replace(TINY_MODEL, max_length=4), "max-length 4 is shorter than the longest toy prompt"),
        (dataclasses.replace(TINY_MODEL, block_out_channels=(33, 64)), r"num_channels \(33\) must be divisible"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train(ToyTrainConfig(out_dir=tmp_path / "new", **{**common, "model": model}))
    assert rendered == [] and (mine / "notes.txt").read_text() == "keep" and (tmp_path / "afile").read_text() == "keep"


def test_a_damaged_dataset_cache_is_rendered_again(tmp_path, capsys):
    config = ToyDataConfig(views_per_prompt=1, resolution=16)
    first = load_or_render(config, tmp_path)
    path = cache_path(config, tmp_path)
    path.write_bytes(path.read_bytes()[:200])  # cut short, as a full disk or a kill outside the rename would
    again = load_or_render(config, tmp_path)
    assert "rendering it again" in capsys.readouterr().out and torch.equal(again.images, first.images)
    assert torch.equal(load_or_render(config, tmp_path).images, first.images)  # and the cache is whole again
    assert "rendering" not in capsys.readouterr().out
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="--data-dir .*afile is a file"):
        load_or_render(config, tmp_path / "afile")


def test_a_prompt_with_words_the_toy_prior_never_saw_gets_a_note(tmp_path, capsys):
    """Found by a hostile-input pass: "a purple ball" and "赤いボール" ran on the toy prior without a word, although
    it reads unknown words as noise (the Japanese prompt encodes exactly as the empty prompt)."""
    import importlib

    from splatdreamer.presets import toy
    from splatdreamer.toy.model import unknown_words

    assert unknown_words("A Red ball, front view") == [] and unknown_words("a two-tone cube") == []
    assert unknown_words("a purple ball, purple") == ["purple"] and unknown_words("赤いボール") == ["赤いボール"]
    generate = importlib.import_module("splatdreamer.generate").generate
    for prompt, noted in [("a purple ball", True), ("a red ball", False)]:
        config = toy()
        config.prompt, config.steps, config.particles = prompt, 1, 1
        config.output.out_dir, config.output.preview_size, config.output.turntable_frames = tmp_path / prompt, 16, 2
        generate(config)
        err = capsys.readouterr().err
        assert ("'purple' is unknown to it and read as noise" in err) == noted and ("note" in err) == noted, err


def test_init_from_starts_at_the_given_prior(tmp_path):
    data = ToyDataConfig(views_per_prompt=4, resolution=16)
    common = dict(data_dir=tmp_path / "data", data=data, model=TINY_MODEL, batch_size=4, warmup_steps=1, log_every=1)
    train(ToyTrainConfig(out_dir=tmp_path / "a", steps=3, seed=1, **common))
    # lr 0: the weights cannot move, so the saved EMA is exactly the prior it started from, not seed 0's init.
    train(ToyTrainConfig(out_dir=tmp_path / "b", steps=1, lr=0.0, init_from=tmp_path / "a", **common))
    a, b, fresh = load(tmp_path / "a"), load(tmp_path / "b"), build(TINY_MODEL, seed=0)
    for name, value in a.unet.state_dict().items():
        assert torch.equal(b.unet.state_dict()[name], value), name
    assert not all(torch.equal(fresh.unet.state_dict()[n], v) for n, v in a.unet.state_dict().items())
    for name, value in a.text_encoder.state_dict().items():
        assert torch.equal(b.text_encoder.state_dict()[name], value), name
    # The fine-tune's record keeps the stage it started from, and the recipe's time is both stages'.
    record_a, record_b = (json.loads((tmp_path / d / "training.json").read_text()) for d in "ab")
    assert record_b["init_from_training"] == record_a
    assert record_b["total_seconds"] == pytest.approx(record_a["seconds"] + record_b["seconds"])
    # Below --keep-init-below-t the target is the starting prior's own prediction: at the first step, before any
    # update, that is the model's, so over all timesteps the loss is zero.
    kept = train(ToyTrainConfig(out_dir=tmp_path / "d", steps=1, init_from=tmp_path / "a", keep_init_below_t=1000,
                                **common))  # fmt: skip
    assert kept.losses == [pytest.approx(0.0, abs=1e-12)]
    with pytest.raises(ConfigError, match="not a prior directory"):
        ToyTrainConfig(init_from=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="other model sizes"):
        train(ToyTrainConfig(out_dir=tmp_path / "c", steps=1, init_from=tmp_path / "a", **{
            **common, "model": dataclasses.replace(TINY_MODEL, block_out_channels=(16, 16))}))


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="no shipped toy prior")
def test_shipped_prior_draws_each_prompt():
    checks = check_prior(load(SHIPPED), per_prompt=4)
    rates = {c.prompt: c.recognised().float().mean().item() for c in checks}
    report = {c.prompt: (c.iou.tolist(), c.color_error.tolist()) for c in checks}
    assert all(r >= 0.25 for r in rates.values()) and sum(rates.values()) / len(rates) >= 0.5, (rates, report)
    ball = next(c for c in checks if c.prompt == "a ball")
    assert len(set(ball.nearest.tolist())) >= 2, ball.nearest  # the ambiguous prompt keeps several colours


def test_guidance_max_t_limits_guidance_to_the_low_noise_steps():
    parts = build(TINY_MODEL, seed=0)

    def draw(scale, max_t=None):
        return sample_images(parts, ["a ball"] * 2, 10, scale, torch.Generator().manual_seed(0), max_t)

    guided, plain = draw(5.0), draw(1.0)
    assert torch.equal(draw(5.0, 999), guided) and torch.equal(draw(5.0, -1), plain)
    half = draw(5.0, 500)  # guided on the 6 steps at t <= 500 of 900, 800, ..., 0
    assert (half - guided).abs().max() > 1e-4 and (half - plain).abs().max() > 1e-4


def test_an_untrained_prior_fails_the_sample_check():
    checks = check_prior(build(ToyModelConfig(), seed=0), per_prompt=2, num_steps=10)
    assert not any(c.recognised().any() for c in checks), [(c.iou, c.color_error) for c in checks]


# --------------------------------------------------------------------------------------------- evaluation


def test_score_particle_is_perfect_on_the_truth_and_worse_when_moved_or_recoloured():
    from splatdreamer.splats import detached_copy, rgb_to_sh0
    from splatdreamer.toy.evaluate import score_particle

    truth = variants("a ball")[3].splats  # the blue variant
    exact = score_particle(truth, "a ball", 32)
    assert exact.variant == 3 and exact.iou == 1.0 and exact.color_err == 0.0 and abs(exact.sat_excess) < 1e-6

    moved = detached_copy(truth)
    with torch.no_grad():
        moved["means"] += torch.tensor([0.2, 0.0, 0.0])
    assert score_particle(moved, "a ball", 32).iou < 0.8
    assert exact.size == 1.0

    bigger = detached_copy(truth)
    with torch.no_grad():
        bigger["means"] *= 1.2
        bigger["scales"] += math.log(1.2)
    assert score_particle(bigger, "a ball", 32).size == pytest.approx(1.44, abs=0.08)  # area grows as length^2

    yellow = detached_copy(truth)
    with torch.no_grad():
        yellow["sh0"][:] = rgb_to_sh0(torch.tensor(PALETTE["yellow"]))
    scored = score_particle(yellow, "a ball", 32)
    assert scored.variant == 1 and scored.iou == 1.0 and scored.color_err < 0.01  # now closest to the yellow ball


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_score_particle_scores_a_cuda_particle_as_its_cpu_copy():
    """`toy eval` on a GPU once failed here: a CUDA particle against the CPU truth."""
    from splatdreamer.splats import detached_copy
    from splatdreamer.toy.evaluate import score_particle

    moved = detached_copy(variants("a ball")[0].splats)
    with torch.no_grad():
        moved["means"] += torch.tensor([0.1, 0.05, 0.0])
    assert score_particle(moved.cuda(), "a ball", 32) == score_particle(moved, "a ball", 32)


def small_eval_base():
    from splatdreamer.presets import toy

    base = toy()
    base.particles, base.steps = 1, 3
    return base


def _prior_named(name: str):
    base = small_eval_base()
    base.prior.name = name
    return base


def test_eval_runs_each_method_and_seed_and_reuses_only_identical_runs(tmp_path, monkeypatch, capsys):
    from splatdreamer.toy import evaluate as ev

    config = ev.ToyEvalConfig(
        prompts=("a red ball",), methods=("sds-7.5",), seeds=(0, 1), base=small_eval_base(), out_dir=tmp_path,
        size=16, report=tmp_path / "report.md", picture=tmp_path / "eval.png",
    )  # fmt: skip
    first = ev.evaluate(config)
    assert [(r.method, r.seed) for r in first] == [("sds-7.5", 0), ("sds-7.5", 1)]
    assert all(0 <= r.scores[0].iou <= 1 and 0 <= r.scores[0].iou_outside <= 1 for r in first)
    assert first[0].scores != first[1].scores  # two seeds, two runs
    iou = [r.scores[0].iou for r in first]
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| a red ball"))
    assert row.startswith(f"| a red ball | sds-7.5 | 2 | {sum(iou) / 2:.3f} ({min(iou):.3f}–{max(iou):.3f}) |")
    from PIL import Image

    sheet = np.asarray(Image.open(tmp_path / "eval.png").convert("RGB"))
    assert sheet.shape == (14 + 16, 2 * 16 + 2, 3)  # label band over [truth | the first seed's one particle]
    assert (sheet[:14] < 128).any() and (sheet[14 + 8, 8] < 100).any()  # a label; the red truth in its cell

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished run was generated again")

    monkeypatch.setattr(ev, "generate", no_generation)
    again = ev.evaluate(dataclasses.replace(config, reuse=True, report=None, picture=None))
    assert again[0].scores == first[0].scores and again[1].seconds == first[1].seconds
    with pytest.raises(AssertionError, match="generated again"):  # another seed is another run
        ev.evaluate(dataclasses.replace(config, reuse=True, seeds=(2,), report=None, picture=None))
    moved = tmp_path.parent / f"{tmp_path.name}_moved"  # a results folder moved elsewhere is the same runs
    shutil.move(tmp_path / "a_red_ball", moved / "a_red_ball")
    again = ev.evaluate(dataclasses.replace(config, out_dir=moved, reuse=True, report=None, picture=None))
    assert [r.scores for r in again] == [r.scores for r in first]
    base = small_eval_base()
    base.steps = 4  # a setting that differs is still another run, wherever the folder is
    with pytest.raises(AssertionError, match="generated again"):
        ev.evaluate(dataclasses.replace(config, base=base, out_dir=moved, reuse=True, report=None, picture=None))
    assert f"{moved / 'a_red_ball' / 'sds-7.5' / 's0'}: its run was made with other settings (steps)" in (
        capsys.readouterr().err
    )


def test_image_space_eval_reports_the_priors_samples_and_writes_the_particles(tmp_path):
    from splatdreamer.toy.evaluate import ToyEvalConfig, evaluate_images

    save(build(TINY_MODEL, seed=0), tmp_path / "prior")
    config = ToyEvalConfig(
        space="image", prompts=("a green cone",), methods=("vsd-7.5", "sds-7.5"), seeds=(0,), image_particles=2,
        image_steps=2, ancestral_samples=3, out_dir=tmp_path / "eval",
    )  # fmt: skip
    config.base.prior.name = str(tmp_path / "prior")
    text = evaluate_images(config)
    (check,) = check_prior(load(tmp_path / "prior"), per_prompt=3, guidance_scale=7.5, prompts=("a green cone",))
    row = f"| 7.5 | {check.recognised().float().mean().item():.0%}, size {check.size.mean().item():.2f} |"
    assert row in text, text
    for method in config.methods:
        sheet = np.asarray(Image.open(tmp_path / "eval" / "image" / "a_green_cone" / f"{method}-s0.png"))
        assert sheet.shape[1] > 2 * 16 and sheet.std() > 0  # both 16-px particles, not a blank picture


def _with_vsd(**changes):
    base = small_eval_base()
    return dataclasses.replace(base, vsd=dataclasses.replace(base.vsd, **changes))


def test_eval_methods_name_their_objective_and_cfg():
    from splatdreamer.toy.evaluate import parse_method, run_config, ToyEvalConfig

    assert parse_method("vsd-7.5") == ("vsd", 7.5) and parse_method("sds-100") == ("sds", 100.0)
    for bad in ("vsd", "sds-x", "gan-7.5", "vsd--1", "vsd-nan", "vsd- 7.5"):
        with pytest.raises(ConfigError, match="MODE-CFG"):
            parse_method(bad)
    gen = run_config(ToyEvalConfig(), "a ball", "sds-1", seed=2)
    assert (gen.vsd.mode, gen.vsd.guidance(), gen.seed, gen.particles) == ("sds", 1.0, 2, 4)
    assert gen.output.out_dir == Path("runs/toy-eval/a_ball/sds-1/s2")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompts": ("a unicorn",)}, "'a unicorn' is not a toy prompt; the toy prompts are a red ball"),
        ({"seeds": ()}, "--seeds is empty"),
        ({"methods": ()}, "--methods is empty"),
        ({"prompts": ()}, "--prompts is empty"),
        ({"size": 0}, r"--size must be in \(0, 4096\], got 0"),
        ({"image_particles": 0, "space": "image"}, "--image-particles must be positive"),
        ({"ancestral_samples": 0, "space": "image"}, "--ancestral-samples must be positive"),
        ({"prompts": "a ball"}, "--prompts must be a tuple or list of values, got 'a ball'"),
        ({"seeds": (0, -1)}, r"--seeds must be in \[0, 9223372036854775806\], got \(0, -1\)"),
        ({"base": dataclasses.replace(small_eval_base(), steps=0)}, "--base.steps must be positive, got 0"),
        ({"report": Path("/nonexistent/r.md")}, "--report /nonexistent/r.md: the folder /nonexistent does not exist"),
        ({"picture": Path("/nonexistent/p.png")}, "--picture /nonexistent/p.png: the folder /nonexistent does not"),
        ({"report": Path("/")}, "--report / is a folder; give a file name such as /benchmarks.md"),
        ({"report": Path(__file__) / "r.md"}, f"--report {Path(__file__) / 'r.md'}: {Path(__file__)} is a file, not"),
        ({"out_dir": Path(__file__) / "eval"}, f"--out-dir {Path(__file__) / 'eval'}: {Path(__file__)} is a file"),
        ({"base": dataclasses.replace(small_eval_base(), seed=5)}, "--base.seed is set for each run of the table; use --seeds"),
        ({"base": dataclasses.replace(small_eval_base(), prompt="a blue cube")}, "--base.prompt is set for each run"),
        ({"base": _with_vsd(cfg_scale_vsd=7.5)}, "--base.vsd.cfg-scale-vsd is set for each run of the table; use "
                                                 "--methods"),
        ({"base": _with_vsd(cfg_scale_sds=50.0)}, "--base.vsd.cfg-scale-sds is set for each run of the table"),
        ({"space": "image", "picture": Path("p.png")}, "--space image writes one sheet of particles per run under"),
        ({"space": "image", "base": _prior_named("nowhere")}, "the prior directory 'nowhere' does not exist"),
    ],
)
def test_eval_refuses_bad_settings_before_any_run(tmp_path, monkeypatch, change, message):
    """Found by a hostile-input pass: these failed only after minutes of runs, or printed an empty table."""
    from splatdreamer.toy import evaluate as ev

    monkeypatch.setattr(ev, "generate", lambda *a, **k: pytest.fail("a run started"))
    monkeypatch.setattr(ev, "evaluate_images", lambda *a, **k: pytest.fail("the 2D check started"))
    config = ev.ToyEvalConfig(base=small_eval_base(), out_dir=tmp_path, report=tmp_path / "r.md")
    config = dataclasses.replace(config, **change)
    with pytest.raises((ConfigError, PriorLoadError), match=message):
        ev.evaluate(config)
    assert not list(tmp_path.iterdir())


def test_purity_separates_true_colours_from_averages():
    from splatdreamer.splats import detached_copy, rgb_to_sh0
    from splatdreamer.toy.evaluate import score_particle

    red = variants("a ball")[0].splats
    assert score_particle(red, "a ball", 32).pure
    purple = detached_copy(red)
    with torch.no_grad():
        purple["sh0"][:] = rgb_to_sh0((torch.tensor(PALETTE["red"]) + torch.tensor(PALETTE["blue"])) / 2)
    assert not score_particle(purple, "a ball", 32).pure


# --------------------------------------------------------------------------------------------- 2D sampler check


def test_classify_colors_names_each_ball_and_an_average_is_not_a_ball_colour():
    from splatdreamer.toy.image_sampler import EMPTY, classify_colors

    front = view(20.0, 15.0, size=32)
    images = torch.cat([render_views(b, front) for b in variants("a ball")])
    blank = torch.ones(1, 3, 32, 32)
    red, blue = images[0:1], images[3:4]
    mixed = torch.where(red < 0.99, (red + blue) / 2, red)  # SDS's red-blue average: a purple ball
    tinted = images[1:2] * 0.9  # a yellow ball on a grey-tinted frame is still yellow
    labels = classify_colors(torch.cat([images, blank, mixed, tinted]))
    assert labels == [*BALL_COLORS, EMPTY, "purple", "yellow"]


def test_exact_phi_is_the_score_of_the_particles_own_mixture():
    """exact_phi's eps at x_t is (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar) under the uniform mixture of the
    particles, computed here from the Gaussian likelihoods directly; a particle noised at low t gets back its
    own noise, and at high t the mixture's mean decides."""
    from splatdreamer.toy.exact import exact_phi

    gen = torch.Generator().manual_seed(0)
    abar = torch.linspace(0.9999, 0.0005, 1000, dtype=torch.float64).float()
    particles = torch.randn(3, 2, 2, 2, generator=gen)
    x_t = torch.randn(5, 2, 2, 2, generator=gen) * 2
    t = torch.tensor([5, 300, 600, 900, 999])
    got = exact_phi(particles, abar)(x_t, t)
    a = abar[t].double().view(-1, 1, 1, 1, 1)
    d2 = (x_t.double()[:, None] - a.sqrt() * particles.double()[None]).pow(2).sum((2, 3, 4), keepdim=True)
    w = torch.softmax(-d2 / (2 * (1 - a)), dim=1)
    mean = (w * particles.double()[None]).sum(1)
    want = (x_t.double() - a[:, 0].sqrt() * mean) / (1 - a[:, 0]).sqrt()
    assert torch.allclose(got.double(), want, atol=1e-5)
    noise = torch.randn(particles.shape, generator=gen)
    low = torch.full((3,), 5)
    a = abar[low].view(-1, 1, 1, 1)
    assert torch.allclose(exact_phi(particles, abar)(a.sqrt() * particles + (1 - a).sqrt() * noise, low), noise, atol=1e-4)


def test_exact_phi_with_a_bandwidth_is_the_score_of_the_widened_mixture():
    """With bandwidth sigma each particle is N(x_i, sigma^2 I), so x_t is a mixture of N(sqrt(abar) x_i, v I),
    v = 1 - abar + abar sigma^2, and eps = -sqrt(1 - abar) grad log q_t: checked against autograd of that
    log-density. A bandwidth far below the noise gives the point mixture's eps."""
    from splatdreamer.toy.exact import exact_phi

    gen = torch.Generator().manual_seed(1)
    abar = torch.linspace(0.9999, 0.0005, 1000, dtype=torch.float64).float()
    particles = torch.randn(4, 3, 2, 2, generator=gen)
    x_t = (torch.randn(6, 3, 2, 2, generator=gen) * 1.5).double().requires_grad_(True)
    t = torch.tensor([10, 200, 400, 600, 800, 990])
    sigma = 0.7
    a = abar[t].double().view(-1, 1, 1, 1, 1)
    v = 1 - a + a * sigma**2
    log_q = torch.logsumexp(
        (-(x_t[:, None] - a.sqrt() * particles.double()[None]).pow(2) / (2 * v)).sum((2, 3, 4)), dim=1
    )  # up to terms free of x_t
    (grad,) = torch.autograd.grad(log_q.sum(), x_t)
    want = -(1 - a[:, 0]).sqrt() * grad
    got = exact_phi(particles, abar, bandwidth=sigma)(x_t.detach().float(), t)
    assert torch.allclose(got.double(), want, atol=1e-5)
    point = exact_phi(particles, abar)(x_t.detach().float(), t)
    assert (got - point).abs().max() > 0.1  # the width matters at these t
    assert torch.allclose(exact_phi(particles, abar, bandwidth=1e-4)(x_t.detach().float(), t), point, atol=1e-4)


def _exact_ball_prior(colors: list[str], views: int = 6, more: dict[str, list[str]] | None = None):
    """ExactPrior of "a ball" made of the toy balls of `colors` from `views` cameras; '' adds a blank image.
    `more` adds sets, each named set made of the balls of its colours from the same cameras."""
    from diffusers import DDPMScheduler

    from splatdreamer.toy.exact import ExactPrior

    cameras = sample(views, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(3))
    balls = {v.name.split()[0]: v for v in variants("a ball")}
    of = lambda cs: torch.cat([render_views(balls[c], cameras) for c in cs])  # noqa: E731
    images = of(colors)
    uncond = torch.cat([images, torch.ones(1, 3, 32, 32)])
    sets = {"a ball": (images, torch.ones(len(images))), "": (uncond, torch.ones(len(uncond)))}
    sets |= {name: (of(cs), torch.ones(len(cs) * views)) for name, cs in (more or {}).items()}
    alphas = DDPMScheduler.from_pretrained(SHIPPED, subfolder="scheduler").alphas_cumprod
    return ExactPrior(sets, alphas), images


def test_exact_prior_guides_with_the_exact_denoisers_of_its_sets():
    """ExactPrior's eps_pretrained is exact_eps of the prompt's set and of the empty prompt's, combined by CFG,
    each sample at its own timestep; a noised training image at low t gets its noise back."""
    prior, images = _exact_ball_prior(["red", "blue"], views=2)
    text = prior.text_embeddings("a ball")
    gen = torch.Generator().manual_seed(0)
    x0, noise = images * 2 - 1, torch.randn(images.shape, generator=gen)
    t = torch.tensor([5, 300, 700, 950])
    x_t = prior.add_noise(x0, noise, t)
    cond = exact_eps(x0, torch.ones(4), prior.alphas_cumprod)
    uncond = exact_eps(torch.cat([x0, torch.ones(1, 3, 32, 32)]), torch.ones(5), prior.alphas_cumprod)
    want = torch.cat([(lambda u, c: u + 7.5 * (c - u))(uncond(x_t[i : i + 1], t[i]), cond(x_t[i : i + 1], t[i])) for i in range(4)])
    got = prior.eps_pretrained(x_t, t, text.plain(4), text.negative(4), 7.5)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got[:1], noise[:1], atol=1e-3)
    assert torch.equal(text.for_views(["front", "back"]), text.plain(2))  # no view sets: every view is the prompt
    with pytest.raises(KeyError, match="no image set"):
        prior.text_embeddings("a cube")


def test_exact_prior_answers_a_view_dependent_prompt_with_that_views_set():
    """A set named "a ball, front view" is what the loop's front-view prompt asks for; the other views, with no
    set of their own, ask for the plain prompt's. A blue image noised to t = 5 is denoised to itself by the plain
    set (red and blue) and to the red image by the front view's (red only)."""
    from splatdreamer.prior.text import view_prompt

    prior, both = _exact_ball_prior(["red", "blue"], views=1, more={view_prompt("a ball", "front"): ["red"]})
    red, blue = both[:1], both[1:]
    text = prior.text_embeddings("a ball")
    assert text.for_views(["front", "side", "back"]).flatten().tolist() == [2.0, 0.0, 0.0]  # sets "a ball", "", front
    x0, t = blue * 2 - 1, torch.tensor([5])
    x_t = prior.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), t)
    for label, want in (("side", blue), ("front", red)):
        eps = prior.eps_pretrained(x_t, t, text.for_views([label]), text.negative(1), 1.0)
        abar = prior.alphas_cumprod[t]
        x0_hat = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        assert (x0_hat - (want * 2 - 1)).abs().mean() < 0.05, label


def test_exact_prior_runs_the_generation_loop_and_its_phi_memorises_the_renders(tmp_path):
    """The unchanged 3D loop runs against ExactPrior: phi is the pretrained model until its first phi_loss, then
    the exact score of the renders that loss was given; VSD against a red-only ball set turns a grey particle red
    (about (0.76, 0.31, 0.30) after 150 steps; the ball is (0.85, 0.12, 0.10))."""
    from splatdreamer import presets
    from splatdreamer.generate import Generation
    from splatdreamer.toy.exact import exact_phi

    torch.set_num_threads(1)
    prior, _ = _exact_ball_prior(["red"])
    text = prior.text_embeddings("a ball")
    x_t, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 600])
    assert torch.equal(prior.eps_phi(x_t, t, text.plain(2), None), prior.eps_pretrained(x_t, t, text.plain(2), text.plain(2), 1.0))
    config = presets.toy()
    config.prompt, config.steps, config.particles = "a ball", 150, 1
    config.vsd = dataclasses.replace(config.vsd, mode="vsd", anneal_step=75, phi_min_t=None)  # phi at every t
    config.splats = dataclasses.replace(config.splats, init_color="grey")
    run = Generation(config, tmp_path, prior=prior)
    for _ in range(config.steps):
        run.train_step()
    memory = prior._memory
    assert memory is not None and memory.shape == (1, 3, 32, 32)
    assert torch.equal(prior.eps_phi(x_t, t, text.plain(2), None), exact_phi(memory, prior.alphas_cumprod)(x_t, t))
    rgb = render(run.particles[0], sample(4, DEFAULT_RANGES, 32, 32, torch.Generator().manual_seed(5)), torch.ones(4, 3))
    mask = rgb.alpha[:, 0] > 0.5
    color = rgb.rgb.permute(0, 2, 3, 1)[mask].mean(0)
    assert color[0] > color[1] + 0.3 and color[0] > color[2] + 0.3, color  # red, from grey


@pytest.mark.parametrize("pretrained", ["exact", "shipped"])
def test_camera_aware_exact_phi_of_one_particle_is_sds(tmp_path, pretrained):
    """With `camera_phi`, phi is the exact score of every particle seen from each sample's camera. One particle
    seen from its own camera is a point, whose exact eps is the drawn noise: VSD then moves the particle
    as SDS does: the same loss at every step (both at CFG 7.5), against the exact prior (`ExactPrior.phi_renders`)
    and against the shipped one (`WithExactPhi`). Two views per particle: a phi that renders each sample from the
    other view's camera moves it otherwise."""
    from splatdreamer import presets
    from splatdreamer.generate import Generation
    from splatdreamer.prior import DiffusionPrior
    from splatdreamer.toy.exact import WithExactPhi, camera_phi

    torch.set_num_threads(1)
    runs = {}
    for mode in ("sds", "vsd", "vsd-swapped"):
        prior = _exact_ball_prior(["red", "blue"], views=2)[0] if pretrained == "exact" else WithExactPhi(
            DiffusionPrior.from_pretrained(SHIPPED)
        )
        config = presets.toy()
        config.prompt, config.steps, config.particles = "a ball", 3, 1
        # phi asked at every t: behind the preset's gate (850) three steps may never ask it.
        config.vsd = dataclasses.replace(config.vsd, mode=mode[:3], views_per_particle=2, cfg_scale=7.5, phi_min_t=None)
        run = Generation(config, tmp_path / mode, prior=prior)
        prior.phi_renders = camera_phi(run)
        if mode == "vsd-swapped":
            prior.phi_renders = lambda condition, phi=camera_phi(run): phi(condition.flip(0))
        runs[mode] = torch.tensor([run.train_step().loss_vsd for _ in range(config.steps)])
        assert run.last_cameras is not None and len(run.last_cameras) == 2
    # Equal up to float32 round-off: phi's eps of a point, (x_t - sqrt(abar) x) / sqrt(1 - abar), recovers the
    # drawn noise with an error that grows as 1 / sqrt(1 - abar) at small t, and eps_pretrained - eps cancels
    # where the prior predicts the noise well (5e-5 on one step of the sixth prior; a wrong camera: 1e-1).
    assert torch.allclose(runs["vsd"], runs["sds"], rtol=1e-4), runs  # exact: 1130, 90.6, 93.7
    assert not torch.allclose(runs["vsd-swapped"], runs["sds"], rtol=1e-2), runs  # exact: 1106, 92.5, 93.9


def test_vsd_with_the_exact_phi_of_one_particle_is_sds():
    """One particle's own mixture is a single point, whose exact eps is the drawn noise: VSD with `phi="exact"`
    then takes SDS's steps exactly, image for image (and never trains the LoRA)."""
    from splatdreamer.prior import DiffusionPrior
    from splatdreamer.toy.image_sampler import ImageRunConfig, distill_images

    torch.set_num_threads(1)
    prior = DiffusionPrior.from_pretrained(SHIPPED)
    lora = [p.detach().clone() for p in prior.phi_parameters()]
    sds = distill_images(prior, "a ball", ImageRunConfig(mode="sds", particles=1, steps=6))
    exact = distill_images(prior, "a ball", ImageRunConfig(mode="vsd", phi="exact", particles=1, steps=6))
    assert all(torch.equal(p, q) for p, q in zip(lora, prior.phi_parameters()))
    assert (exact - sds).abs().max() < 1e-5
    lora_run = distill_images(prior, "a ball", ImageRunConfig(mode="vsd", particles=1, steps=6))
    assert (lora_run - sds).abs().max() > 1e-3  # the LoRA's phi is not the noise


@pytest.mark.slow
def test_image_particles_follow_the_prior(tmp_path):
    """VSD's image particles of "a red ball" on the shipped prior become red balls; SDS moves them too."""
    from splatdreamer.prior import DiffusionPrior
    from splatdreamer.toy.image_sampler import ImageRunConfig, classify_colors, distill_images

    torch.set_num_threads(1)
    for mode in ("vsd", "sds"):
        prior = DiffusionPrior.from_pretrained(SHIPPED)
        images = distill_images(prior, "a red ball", ImageRunConfig(mode=mode, particles=4, steps=150, cfg_scale=3.0))
        assert images.shape == (4, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
        labels = classify_colors(images)
        assert labels.count("red") >= 3, (mode, labels)


def test_eval_colors_table_names_each_particles_closest_ball_per_seed_and_method():
    from splatdreamer.toy.evaluate import Row, Score, colors_table

    def score(variant, color_err=0.02):
        return Score(iou=0.9, iou_outside=0.9, color_err=color_err, psnr=20.0, sat_excess=0.0, variant=variant)

    rows = [
        Row("a ball", "vsd-7.5", 0, [score(0), score(2), score(3), score(0)], 3, 1.0, None),
        Row("a ball", "sds-7.5", 0, [score(0), score(0), score(3, color_err=0.3), score(1)], 2, 1.0, None),
        Row("a ball", "vsd-7.5", 1, [score(1), score(1), score(1), score(1)], 1, 1.0, None),
        Row("a red ball", "vsd-7.5", 0, [score(0)], 1, 1.0, None),  # one variant: no colour table
    ]
    assert colors_table(rows).splitlines() == [
        "| a ball: seed | vsd-7.5 | sds-7.5 |",
        "|---|---|---|",
        "| 0 | r g b r | r r b* y |",
        "| 1 | y y y y | – |",
    ]
    assert colors_table(rows[3:]) == ""
