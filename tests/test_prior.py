"""DiffusionPrior on tiny diffusers models written by the tests and loaded through the real from_pretrained."""

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from splatdreamer.errors import ConfigError, PriorLoadError
from splatdreamer.prior import DiffusionPrior
from tiny_models import build_tiny_sd


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on two shared cores run ~100x slower when another process is busy (measured); tiny models
    # gain nothing from threads anyway.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("pixel"))


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("latent"), with_vae=True)


@pytest.fixture(scope="module")
def vpred_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("vpred"), prediction_type="v_prediction", seed=1)


def load(directory, **kwargs):
    torch.manual_seed(0)  # the camera embedding's default init draws from the global generator
    return DiffusionPrior.from_pretrained(directory, **kwargs)


def fresh_unet(directory):
    return UNet2DConditionModel.from_pretrained(directory, subfolder="unet").eval()


def noisy_batch(prior, b=2, seed=0):
    """Clean latents x0, timesteps t, noise and x_t for a batch of random images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, prior.resolution, prior.resolution, generator=g)
    x0 = prior.encode_images(images, generator=g)
    t = torch.tensor([100, 700, 400, 950][:b])
    noise = torch.randn(x0.shape, generator=g)
    return x0, t, noise, prior.add_noise(x0, noise, t)


def train_phi(prior, steps, lr, b=2):
    text = prior.text_embeddings("a red ball")
    x0, *_ = noisy_batch(prior, b)
    cam = torch.randn(b, 16, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(prior.phi_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        # The same t and noise every step, so the losses are comparable.
        loss = prior.phi_loss(x0, text.plain(b), cam, generator=torch.Generator().manual_seed(0), camera_dropout=0.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def param_count(prior) -> int:
    """Every distinct parameter reachable from the prior's attributes (modules and lists of parameters)."""
    seen = {}
    for value in vars(prior).values():
        if isinstance(value, torch.nn.Module):
            seen.update((id(p), p.numel()) for p in value.parameters())
        elif isinstance(value, list):
            seen.update((id(p), p.numel()) for p in value if isinstance(p, torch.nn.Parameter))
    return sum(seen.values())


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------- loading


def test_pixel_and_latent_priors_load_with_their_training_schedule(pixel_dir, latent_dir):
    pixel, latent = load(pixel_dir), load(latent_dir)
    assert (pixel.resolution, latent.resolution) == (8, 16)  # sample_size 8; x VAE factor 2
    assert pixel.vae is None and latent.vae is not None
    assert pixel.dtype == torch.float32 and pixel.num_train_timesteps == 1000
    # The latent model's directory names PNDM (as SD 1.x does); the prior still has the training betas.
    want = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    for prior in (pixel, latent):
        assert prior.alphas_cumprod.dtype == torch.float32
        torch.testing.assert_close(prior.alphas_cumprod, want)


def test_a_pipeline_saved_by_diffusers_without_vae_loads(tmp_path, pixel_dir):
    """The toy prior's path: StableDiffusionPipeline(vae=None, ...).save_pretrained(dir)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=CLIPTextModel.from_pretrained(pixel_dir, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(pixel_dir, subfolder="tokenizer"),
        unet=fresh_unet(pixel_dir),
        scheduler=DDPMScheduler.from_pretrained(pixel_dir, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "saved")
    a, b = load(pixel_dir), load(tmp_path / "saved")
    assert b.vae is None and b.resolution == 8
    _, t, _, x_t = noisy_batch(a)
    ta, tb = a.text_embeddings("a red ball"), b.text_embeddings("a red ball")
    assert torch.equal(ta.cond, tb.cond)
    assert torch.equal(a.eps_pretrained(x_t, t, ta.plain(2), ta.negative(2), 7.5),
                       b.eps_pretrained(x_t, t, tb.plain(2), tb.negative(2), 7.5))  # fmt: skip


def test_weights_saved_as_a_variant_load(tmp_path, pixel_dir):
    variant_dir = build_tiny_sd(tmp_path / "fp16", variant="fp16")  # only *.fp16.safetensors, same seed
    a, b = load(pixel_dir), load(variant_dir)
    _, t, _, x_t = noisy_batch(a)
    text_a, text_b = a.text_embeddings("a blue cube"), b.text_embeddings("a blue cube")
    assert torch.equal(
        a.eps_pretrained(x_t, t, text_a.plain(2), text_a.negative(2), 7.5),
        b.eps_pretrained(x_t, t, text_b.plain(2), text_b.negative(2), 7.5),
    )


def test_hub_id_is_read_from_the_offline_cache(tmp_path, pixel_dir, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--sd" / "snapshots" / "0123abcd"
    shutil.copytree(pixel_dir, snapshot)
    (cache / "models--tiny--sd" / "refs").mkdir()
    (cache / "models--tiny--sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    prior = load("tiny/sd")
    assert prior.resolution == 8
    with pytest.raises(PriorLoadError, match="not in the offline Hugging Face cache"):
        load("tiny/not-downloaded")


def test_bf16_weights_keep_phi_in_fp32(pixel_dir):
    prior = load(pixel_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in prior.unet.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in prior.phi_parameters()} == {torch.float32}
    text = prior.text_embeddings("a red ball")
    x0, t, _, x_t = noisy_batch(prior)
    eps = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), 7.5)
    eps_phi = prior.eps_phi(x_t, t, text.plain(2), torch.randn(2, 16))
    assert eps.dtype == eps_phi.dtype == torch.float32 and eps.isfinite().all() and eps_phi.isfinite().all()
    prior.phi_loss(x0, text.plain(2), torch.randn(2, 16)).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in prior.phi_parameters())


def test_bad_priors_each_get_one_clear_error(tmp_path, pixel_dir, latent_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ways_out = r"[\s\S]*pre-populate the Hugging Face cache[\s\S]*--prior.name toy"

    with pytest.raises(PriorLoadError, match="directory '.*missing' does not exist" + ways_out):
        load(str(tmp_path / "missing"))
    with pytest.raises(PriorLoadError, match="'someone/sd-model' is not a local directory, and as a hub id it is not "
                       "in the offline Hugging Face cache" + ways_out):  # fmt: skip
        load("someone/sd-model")

    def broken(name, source=pixel_dir):
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    no_unet = broken("no_unet")
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(PriorLoadError, match="not a diffusers Stable Diffusion directory: unet/ is missing" + ways_out):
        load(no_unet)
    no_index = broken("no_index")
    (no_index / "model_index.json").unlink()
    with pytest.raises(PriorLoadError, match="model_index.json is missing"):
        load(no_index)
    no_weights = broken("no_weights")
    (no_weights / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(PriorLoadError, match="text_encoder/ has no weights"):
        load(no_weights)
    cut = broken("cut_weights")  # weights cut short, as an interrupted copy leaves them
    weights = cut / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PriorLoadError, match="looks like a Stable Diffusion directory but could not be loaded") as e:
        load(cut)
    assert ". ." not in str(e.value) and ".. " not in str(e.value)
    no_merges = broken("no_merges")
    for name in ("merges.txt", "tokenizer.json"):
        (no_merges / "tokenizer" / name).unlink()
    with pytest.raises(PriorLoadError, match="tokenizer/vocab.json \\+ tokenizer/merges.txt"):
        load(no_merges)

    lost_vae = broken("lost_vae", latent_dir)
    shutil.rmtree(lost_vae / "vae")
    with pytest.raises(PriorLoadError, match=r"vae/ \(model_index.json names one\) is missing"):
        load(lost_vae)
    index = json.loads((lost_vae / "model_index.json").read_text())
    del index["vae"]
    (lost_vae / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PriorLoadError, match="unsupported model kind: it has no vae/.*takes 4 channels" + ways_out):
        load(lost_vae)
    sdxl = broken("sdxl")
    index = json.loads((sdxl / "model_index.json").read_text())
    index.update(
        _class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModelWithProjection"]
    )
    (sdxl / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PriorLoadError, match=r"\(StableDiffusionXLPipeline\) is an unsupported model kind"):
        load(sdxl)
    sample_pred = broken("sample_pred")
    config = json.loads((sample_pred / "scheduler" / "scheduler_config.json").read_text())
    config["prediction_type"] = "sample"
    (sample_pred / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(PriorLoadError, match="predicts 'sample'; splatdreamer supports epsilon and v_prediction"):
        load(sample_pred)
    # Damaged JSON of the right syntax and the wrong shape (found by a hostile-input pass: raw AttributeError,
    # IndexError and TypeError from inside the check).
    for name, file, text in [
        ("index_list", "model_index.json", "[1, 2]"),
        ("unet_config_list", "unet/config.json", "[]"),
    ]:
        target = broken(name)
        (target / file).write_text(text)
        with pytest.raises(PriorLoadError, match=f"{file} holds a JSON list, not an object: it is damaged" + ways_out):
            load(target)
    for value in ([], None, [None, None]):
        target = broken(f"text_encoder_2_{len(value) if value else value}")
        index = json.loads((target / "model_index.json").read_text())
        index["text_encoder_2"] = value
        (target / "model_index.json").write_text(json.dumps(index))
        assert load(target).resolution == load(pixel_dir).resolution  # an absent component, however written
    with pytest.raises(ConfigError, match="LoRA rank"):
        load(pixel_dir, lora_rank=0)


def test_empty_prompt_is_a_config_error(pixel_dir):
    prior = load(pixel_dir)
    for prompt in ("", "   \n"):
        with pytest.raises(ConfigError, match="the prompt is empty"):
            prior.text_embeddings(prompt)


# --------------------------------------------------------------------------------------------- text and images


def test_text_embeddings_plain_negative_and_view_dependent(pixel_dir):
    prior = load(pixel_dir)
    text = prior.text_embeddings("a red ball", negative_prompt="a blue cube")
    assert prior.text_embeddings("a red ball", negative_prompt="a blue cube") is text  # cached
    assert prior.text_embeddings("a red ball") is not text
    assert text.cond.shape == (1, 16, 16)  # [1, L, D]: tokenizer max length 16, text width 16
    torch.testing.assert_close(text.cond, prior.encode_text(["a red ball"]))
    torch.testing.assert_close(text.uncond, prior.encode_text(["a blue cube"]))
    for label in ("front", "side", "back", "overhead"):
        torch.testing.assert_close(text.view[label], prior.encode_text([f"a red ball, {label} view"]))
    assert not torch.equal(text.view["front"], text.view["back"])
    views = text.for_views(["back", "front", "back"])
    assert views.shape == (3, 16, 16)
    assert torch.equal(views[0], text.view["back"][0]) and torch.equal(views[1], text.view["front"][0])
    assert text.plain(3).shape == text.negative(3).shape == (3, 16, 16)


def test_latent_prior_encodes_with_gradient_and_decodes(latent_dir):
    prior = load(latent_dir)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)  # resized to the prior's 16 px
    latents = prior.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    latents.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.no_grad():
        again = prior.encode_images(images, generator=torch.Generator().manual_seed(0))
        other = prior.encode_images(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(latents.detach(), again) and not torch.equal(again, other)  # a posterior sample, seeded
    decoded = prior.decode_latents(latents.detach())
    assert decoded.shape == (2, 3, 16, 16) and decoded.min() >= 0 and decoded.max() <= 1


def test_pixel_prior_is_the_image_in_minus_one_one(pixel_dir):
    prior = load(pixel_dir)
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    x0 = prior.encode_images(images)
    torch.testing.assert_close(x0, images * 2 - 1)
    torch.testing.assert_close(prior.decode_latents(x0), images.detach())
    x0.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 2.0))
    big = torch.rand(1, 3, 16, 16)
    want = torch.nn.functional.interpolate(big, (8, 8), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(prior.encode_images(big), want * 2 - 1)


# --------------------------------------------------------------------------------------------- eps_pretrained


@pytest.mark.parametrize(
    "which,switch", [("pixel", "flag"), ("latent", "flag"), ("pixel", "public")]
)  # "public": the fallback through peft's own switch, for a peft without the flag
def test_pretrained_equals_a_fresh_unet_bit_for_bit_after_phi_training(which, switch, pixel_dir, latent_dir):
    directory = {"pixel": pixel_dir, "latent": latent_dir}[which]
    prior = load(directory)
    assert prior._adapter_flag  # this peft has the flag, so the fast switch is what runs
    prior._adapter_flag = switch == "flag"
    fresh = fresh_unet(directory)
    train_phi(prior, steps=3, lr=1e-2)  # move the LoRA (B starts at 0) and the camera embedding
    assert all(p.abs().sum() > 0 for n, p in prior.unet.named_parameters() if "lora_B" in n)

    text = prior.text_embeddings("a red ball", "a green cone")
    _, t, _, x_t = noisy_batch(prior)
    cond, uncond = text.for_views(["front", "overhead"]), text.negative(2)
    got = prior.eps_pretrained(x_t, t, cond, uncond, cfg_scale=7.5)
    with torch.no_grad():  # the same batched call and formula on the untouched weights
        eps_u, eps_c = fresh(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).sample.split(2)
    assert torch.equal(got, eps_u + 7.5 * (eps_c - eps_u))
    # ...while phi, on the same UNet, is now a different function.
    eps_phi = prior.eps_phi(x_t, t, cond, torch.zeros(2, 16))
    assert (eps_phi - eps_c).abs().max() > 1e-3
    assert prior.unet.class_embedding is None


def test_cfg_follows_its_formula(pixel_dir):
    prior = load(pixel_dir)
    fresh = fresh_unet(pixel_dir)
    text = prior.text_embeddings("a blue cube", negative_prompt="a green cone")
    _, t, _, x_t = noisy_batch(prior)
    with torch.no_grad():  # two separate calls of batch B
        e_c = fresh(x_t, t, encoder_hidden_states=text.plain(2)).sample
        e_u = fresh(x_t, t, encoder_hidden_states=text.negative(2)).sample
    for scale in (0.0, 1.0, 7.5, 100.0):
        got = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), cfg_scale=scale)
        torch.testing.assert_close(got, e_u + scale * (e_c - e_u), rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def test_cfg_1_runs_the_unet_on_the_conditional_samples_alone(pixel_dir):
    """At CFG 1 the guided score is eps_c: one UNet call on B samples, equal to eps_c of a fresh UNet (a scale
    given per sample, even all ones, still runs both branches)."""
    prior = load(pixel_dir)
    fresh = fresh_unet(pixel_dir)
    text = prior.text_embeddings("a blue cube", negative_prompt="a green cone")
    _, t, _, x_t = noisy_batch(prior)
    batches = []
    hook = prior.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    got = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), cfg_scale=1.0)
    per_sample = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), cfg_scale=torch.ones(2))
    hook.remove()
    assert batches == [2, 4]
    with torch.no_grad():
        e_c = fresh(x_t, t, encoder_hidden_states=text.plain(2)).sample
    assert torch.equal(got, e_c)
    torch.testing.assert_close(per_sample, e_c, rtol=1e-5, atol=1e-5)


def test_v_prediction_converts_to_epsilon(vpred_dir):
    prior = load(vpred_dir)
    assert prior.prediction_type == "v_prediction"
    x0, t, noise, x_t = noisy_batch(prior)
    # The exact velocity of this x_t, as diffusers defines it, converts back to the exact noise.
    v = DDPMScheduler.from_pretrained(vpred_dir, subfolder="scheduler").get_velocity(x0, noise, t)
    from splatdreamer.prior import to_epsilon

    torch.testing.assert_close(to_epsilon(v, x_t, t, "v_prediction", prior.alphas_cumprod), noise)
    # And the prior applies eps = sqrt(abar) v + sqrt(1 - abar) x_t to the UNet's v before guidance.
    text = prior.text_embeddings("a red ball")
    with torch.no_grad():
        v_c = fresh_unet(vpred_dir)(x_t, t, encoder_hidden_states=text.plain(2)).sample
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    got = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), cfg_scale=1.0)
    torch.testing.assert_close(got, abar.sqrt() * v_c + (1 - abar).sqrt() * x_t, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- phi


def test_phi_steps_at_the_paper_lr_lower_its_loss_and_touch_only_phi(pixel_dir):
    prior = load(pixel_dir)
    text = prior.text_embeddings("a red ball")
    x0, *_ = noisy_batch(prior)
    prior.phi_loss(x0, text.plain(2), torch.randn(2, 16), camera_dropout=0.0).backward()
    phi = {id(p) for p in prior.phi_parameters()}
    camera = {id(p) for p in prior.camera_embedding.parameters()}
    for name, p in [*prior.unet.named_parameters(), *prior.camera_embedding.named_parameters()]:
        assert (id(p) in phi) == (p.grad is not None) == ("lora_" in name or id(p) in camera), name
    assert all(p.grad is None for p in prior.text_encoder.parameters())
    assert all(p.grad.abs().sum() > 0 for p in prior.camera_embedding.parameters())

    # AdamW at the official 1e-4 (main.py --unet_lr) with fixed t and noise: every step lowers the loss.
    losses = train_phi(load(pixel_dir), steps=8, lr=1e-4)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_phi_on_v_prediction_trains_on_the_velocity(vpred_dir):
    prior = load(vpred_dir)
    text = prior.text_embeddings("a red ball")
    x0, *_ = noisy_batch(prior)
    cam = torch.randn(2, 16)
    loss = prior.phi_loss(x0, text.plain(2), cam, generator=torch.Generator().manual_seed(7), camera_dropout=0.0)
    g = torch.Generator().manual_seed(7)  # phi_loss draws t, then the noise, from its generator
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    scheduler = DDPMScheduler.from_pretrained(vpred_dir, subfolder="scheduler")
    with torch.no_grad():  # LoRA B = 0 at init: phi is the base UNet plus the camera embedding
        base = fresh_unet(vpred_dir)
        base.class_embedding = prior.camera_embedding
        v = base(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text.plain(2), class_labels=cam).sample
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(v, scheduler.get_velocity(x0, noise, t)))
    losses = train_phi(prior, steps=8, lr=1e-4)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_phi_loss_trains_at_the_timesteps_it_is_given(vpred_dir):
    """--prior.phi-timesteps schedule hands phi_loss the particles' t: it then draws only the noise (and the dropout
    coin), and the loss is the one at those t."""
    prior = load(vpred_dir)
    text = prior.text_embeddings("a red ball")
    x0, *_ = noisy_batch(prior)
    cam = torch.randn(2, 16)
    t = torch.tensor([950, 960])
    loss = prior.phi_loss(x0, text.plain(2), cam, generator=torch.Generator().manual_seed(7), camera_dropout=0.0, t=t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    scheduler = DDPMScheduler.from_pretrained(vpred_dir, subfolder="scheduler")
    with torch.no_grad():
        base = fresh_unet(vpred_dir)
        base.class_embedding = prior.camera_embedding
        v = base(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text.plain(2), class_labels=cam).sample
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(v, scheduler.get_velocity(x0, noise, t)))


def test_phi_loss_draws_its_timesteps_from_t_min_up(vpred_dir):
    """--prior.phi-timesteps asked: phi_loss draws t ~ U{t_min..T-1} from its generator, then the noise, as it
    would draw them over all t; a t_min outside the prior's timesteps is refused by name."""
    prior = load(vpred_dir)
    text = prior.text_embeddings("a red ball")
    x0, *_ = noisy_batch(prior)
    cam = torch.randn(2, 16)
    gen = torch.Generator().manual_seed(7)
    loss = prior.phi_loss(x0, text.plain(2), cam, generator=gen, camera_dropout=0.0, t_min=900)
    g = torch.Generator().manual_seed(7)
    t = torch.randint(900, prior.num_train_timesteps, (2,), generator=g)
    assert int(t.min()) >= 900
    torch.testing.assert_close(loss, prior.phi_loss(x0, text.plain(2), cam, generator=g, camera_dropout=0.0, t=t))
    other = prior.phi_loss(x0, text.plain(2), cam, generator=torch.Generator().manual_seed(7), camera_dropout=0.0)
    assert not torch.allclose(loss, other)  # t_min reaches the draw
    with pytest.raises(ValueError, match="t_min=1000"):
        prior.phi_loss(x0, text.plain(2), cam, t_min=prior.num_train_timesteps)


def test_camera_changes_eps_phi_and_phi_guidance(pixel_dir):
    prior = load(pixel_dir)
    text = prior.text_embeddings("a red ball")
    _, t, _, x_t = noisy_batch(prior)
    cam = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    e_cam = prior.eps_phi(x_t, t, text.plain(2), cam)
    e_free = prior.eps_phi(x_t, t, text.plain(2), torch.zeros(2, 16))
    assert (e_cam - e_free).abs().max() > 1e-4
    # Guidance between camera and no camera, as threestudio (scale 1 = the camera pass alone).
    torch.testing.assert_close(prior.eps_phi(x_t, t, text.plain(2), cam, cfg_scale=3.0),
                               e_free + 3.0 * (e_cam - e_free), rtol=1e-4, atol=1e-5)  # fmt: skip
    # Only phi sees the camera.
    eps = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), 1.0)
    assert torch.equal(eps, prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), 1.0))
    assert prior.unet.class_embedding is None


def test_one_unet_in_memory(pixel_dir, latent_dir):
    for directory in (pixel_dir, latent_dir):
        prior = load(directory)
        lora = sum(p.numel() for n, p in prior.unet.named_parameters() if "lora_" in n)
        assert lora > 0 and prior.phi_unet is prior.unet
        bound = numel(fresh_unet(directory)) + numel(prior.text_encoder) + lora + numel(prior.camera_embedding)
        bound += numel(prior.vae) if prior.vae is not None else 0
        assert param_count(prior) <= bound
        assert sum(p.numel() for p in prior.phi_parameters()) == lora + numel(prior.camera_embedding)


def test_phi_state_round_trips_and_rejects_another_rank(pixel_dir):
    a, b = load(pixel_dir), load(pixel_dir)
    with torch.no_grad():
        for p in a.phi_parameters():
            p.add_(0.1)
    b.load_phi_state_dict(a.phi_state_dict())
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.phi_parameters(), b.phi_parameters()))
    with pytest.raises(ConfigError, match="phi does not fit this prior"):
        load(pixel_dir, lora_rank=2).load_phi_state_dict(a.phi_state_dict())


def test_separate_phi_base_keeps_its_own_prediction_type(pixel_dir, vpred_dir, tmp_path):
    prior = load(pixel_dir, phi_base=vpred_dir)  # eps-prediction pretrained, v-prediction phi (as official)
    assert prior.phi_unet is not prior.unet and prior.phi_prediction_type == "v_prediction"
    assert not any("lora_" in n for n, _ in prior.unet.named_parameters())
    text = prior.text_embeddings("a red ball")
    _, t, _, x_t = noisy_batch(prior)
    cam = torch.randn(2, 16)
    with torch.no_grad():
        e_c = fresh_unet(pixel_dir)(x_t, t, encoder_hidden_states=text.plain(2)).sample
        # LoRA B = 0 at init, so phi is its base UNet plus the camera embedding: v, converted to eps.
        base = fresh_unet(vpred_dir)
        base.class_embedding = prior.camera_embedding
        v = base(x_t, t, encoder_hidden_states=text.plain(2), class_labels=cam).sample
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(prior.eps_phi(x_t, t, text.plain(2), cam), abar.sqrt() * v + (1 - abar).sqrt() * x_t)
    torch.testing.assert_close(prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), 1.0), e_c)
    assert param_count(prior) > numel(prior.unet) + numel(prior.phi_unet)  # the cost: a second UNet

    wide = build_tiny_sd(tmp_path / "wide", cross_attention_dim=32)
    with pytest.raises(PriorLoadError, match="phi's base model does not fit.*cross_attention_dim 32 vs 16"):
        load(pixel_dir, phi_base=wide)


@pytest.mark.parametrize("init", ["default", "zero"])
def test_zero_camera_init_starts_phi_as_the_pretrained_model(pixel_dir, init):
    prior = load(pixel_dir, camera_init=init)
    text = prior.text_embeddings("a red ball")
    _, t, _, x_t = noisy_batch(prior)
    cam = torch.randn(2, 16)
    phi = prior.eps_phi(x_t, t, text.plain(2), cam)
    pretrained = prior.eps_pretrained(x_t, t, text.plain(2), text.negative(2), 1.0)
    if init == "zero":  # LoRA B = 0 and a zero camera embedding: phi is the pretrained model, for any camera
        torch.testing.assert_close(phi, pretrained)
    else:  # PyTorch's init of the last layer adds a random offset to the time embedding
        assert (phi - pretrained).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="camera_init"):
        load(pixel_dir, camera_init="ones")


def test_phi_fit_is_one_before_phi_learns_the_particles_and_falls_after(pixel_dir):
    """The 2D check's measure of phi (toy/image_sampler.phi_fit): phi's epsilon error over the pretrained
    model's on the particles, which is what VSD's push between particles needs below 1."""
    from splatdreamer.toy.image_sampler import phi_fit

    prior = load(pixel_dir, camera_init="zero")  # phi starts as the pretrained model
    images = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]])[:, :, None, None].expand(2, 3, prior.resolution, prior.resolution).clone()
    before = phi_fit(prior, images, "a red ball", timesteps=(100, 500))
    assert list(before) == [100, 500]
    for pretrained, phi in before.values():
        assert phi == pytest.approx(pretrained, rel=1e-5) and pretrained > 0
    x0 = prior.encode_images(images)
    text, camera = prior.text_embeddings("a red ball").plain(2), torch.zeros(2, prior.camera_dim)
    opt = torch.optim.AdamW(prior.phi_parameters(), lr=1e-2)
    for i in range(100):
        loss = prior.phi_loss(x0, text, camera, generator=torch.Generator().manual_seed(i), camera_dropout=0.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = phi_fit(prior, images, "a red ball", timesteps=(100, 500))
    for t, (pretrained, phi) in after.items():
        assert pretrained == pytest.approx(before[t][0])  # the frozen model and the fixed noise are unchanged
        assert phi < 0.9 * pretrained
