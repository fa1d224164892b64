"""The score-distillation math of vsd.py on tiny priors loaded through DiffusionPrior.from_pretrained."""

import pytest
import torch

from splatdreamer import vsd
from splatdreamer.errors import ConfigError
from splatdreamer.prior import DiffusionPrior
from tiny_models import build_tiny_sd

LABELS = ["front", "side", "back"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_prior.py: threads only contend on the shared cores
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    torch.manual_seed(0)
    return DiffusionPrior.from_pretrained(build_tiny_sd(tmp_path_factory.mktemp("pixel")))


@pytest.fixture(scope="module")
def latent_prior(tmp_path_factory):
    torch.manual_seed(0)
    return DiffusionPrior.from_pretrained(build_tiny_sd(tmp_path_factory.mktemp("latent"), with_vae=True))


def distill(prior, mode, **kwargs):
    """Run score_distillation on 3 random renders and backpropagate its surrogate to the latents."""
    text = prior.text_embeddings("a red ball")
    images = torch.rand(3, 3, prior.resolution, prior.resolution, generator=torch.Generator().manual_seed(1))
    latents = prior.encode_images(images).requires_grad_(True)
    t = torch.tensor([50, 400, 900])
    camera = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    out = vsd.score_distillation(
        prior, latents, t, text, LABELS, camera, mode=mode, cfg_scale=7.5, generator=torch.Generator().manual_seed(0),
        **kwargs,
    )  # fmt: skip
    out.loss.backward()
    return out, latents, t, text, camera


def test_vsd_surrogate_gradient_is_the_weighted_score_difference_over_b(prior):
    out, latents, t, text, camera = distill(prior, "vsd")
    x_t = prior.add_noise(latents.detach(), out.noise, t)
    eps_pre = prior.eps_pretrained(x_t, t, text.for_views(LABELS), text.negative(3), 7.5)
    eps_phi = prior.eps_phi(x_t, t, text.plain(3), camera)
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(out.grad, w * (eps_pre - eps_phi))
    torch.testing.assert_close(latents.grad, w * (eps_pre - eps_phi) / 3, rtol=1e-5, atol=1e-8)
    assert (eps_pre - eps_phi).abs().max() > 1e-3  # the two scores differ, so the test can tell them apart
    assert torch.equal(out.t, t)
    assert out.grad_norm.item() == pytest.approx(out.grad.flatten(1).norm(dim=1).mean().item())


def test_sds_replaces_phi_by_the_sampled_noise(prior):
    out, latents, t, text, _ = distill(prior, "sds")
    x_t = prior.add_noise(latents.detach(), out.noise, t)
    eps_pre = prior.eps_pretrained(x_t, t, text.for_views(LABELS), text.negative(3), 7.5)
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(latents.grad, w * (eps_pre - out.noise) / 3, rtol=1e-5, atol=1e-8)


def test_cfg_max_t_guides_only_the_samples_at_or_below_it(prior):
    out, latents, t, text, _ = distill(prior, "sds", cfg_max_t=400)  # t = 50, 400, 900
    x_t = prior.add_noise(latents.detach(), out.noise, t)
    y, neg = text.for_views(LABELS), text.negative(3)
    guided, unguided = prior.eps_pretrained(x_t, t, y, neg, 7.5), prior.eps_pretrained(x_t, t, y, neg, 1.0)
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(out.grad[:2], (w * (guided - out.noise))[:2])
    torch.testing.assert_close(out.grad[2:], (w * (unguided - out.noise))[2:])
    assert (guided[2] - unguided[2]).abs().max() > 1e-3  # CFG changes that sample, so the test can tell


def test_phi_min_t_gives_sds_at_or_below_it_and_runs_phi_on_the_other_samples_only(prior, monkeypatch):
    vsd_out, sds_out = distill(prior, "vsd")[0], distill(prior, "sds")[0]  # t = 50, 400, 900, the same noise
    batches = []
    eps_phi = prior.eps_phi
    monkeypatch.setattr(prior, "eps_phi", lambda x_t, *a, **k: batches.append(len(x_t)) or eps_phi(x_t, *a, **k))
    gated = distill(prior, "vsd", phi_min_t=400)[0]
    torch.testing.assert_close(gated.grad[:2], sds_out.grad[:2])
    torch.testing.assert_close(gated.grad[2:], vsd_out.grad[2:])
    assert batches == [1]  # phi's UNet ran on the t = 900 sample alone
    assert (vsd_out.grad - sds_out.grad).flatten(1).abs().amax(1).min() > 1e-3  # every sample tells them apart


def test_gradient_reaches_the_renders_through_the_vae(latent_prior):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    text = latent_prior.text_embeddings("a blue cube")
    latents = latent_prior.encode_images(images, generator=torch.Generator().manual_seed(0))
    out = vsd.score_distillation(latent_prior, latents, torch.tensor([300, 600]), text, None, torch.zeros(2, 16))
    out.loss.backward()
    assert images.grad.isfinite().all() and images.grad.abs().sum() > 0


def test_clip_and_nan_to_num(prior):
    out, *_ = distill(prior, "vsd", grad_clip=0.05)
    assert out.grad.abs().max() <= 0.05 and (out.grad.abs() == 0.05).any()
    text = prior.text_embeddings("a red ball")
    latents = torch.zeros(2, 3, 8, 8)
    latents[0, 0, 0, 0] = float("nan")  # one NaN spreads over its whole sample in the UNet
    out = vsd.score_distillation(prior, latents, torch.tensor([10, 10]), text, None, torch.zeros(2, 16))
    assert out.grad.isfinite().all() and out.grad[1].abs().sum() > 0  # the NaN sample's grad is 0, not NaN
    assert out.loss.isnan()  # ...but NaN renders stay visible to the caller's finiteness check
    with pytest.raises(ConfigError, match="unknown score-distillation mode"):
        vsd.score_distillation(prior, latents, torch.tensor([10, 10]), text, None, torch.zeros(2, 16), mode="ism")


def test_surrogate_gradient_is_grad_over_b():
    latents = torch.randn(4, 3, 2, 2, requires_grad=True)
    grad = torch.randn(4, 3, 2, 2)
    loss = vsd.surrogate_loss(latents, grad)
    loss.backward()
    torch.testing.assert_close(latents.grad, grad / 4)
    torch.testing.assert_close(loss, 0.5 * grad.square().sum() / 4)


def test_w_on_the_stable_diffusion_schedule(prior):
    # notes/vsd.md §3 (derived for SD's scaled_linear 0.00085 -> 0.012): 0.0187, 0.7237, 0.9942.
    got = vsd.w(prior.alphas_cumprod, torch.tensor([20, 500, 980]))
    torch.testing.assert_close(got, torch.tensor([0.0187, 0.7237, 0.9942]), atol=1e-4, rtol=0)


def test_timestep_schedule_anneals_and_samples_inclusive_bounds():
    s = vsd.TimestepSchedule(anneal_step=100)
    assert (s.t_min, s.t_max, s.t_max_annealed) == (20, 980, 500)
    assert s.timestep_bounds(0) == s.timestep_bounds(99) == (20, 980)
    assert s.timestep_bounds(100) == s.timestep_bounds(10**6) == (20, 500)
    early = s.sample_timesteps(20000, 0, torch.Generator().manual_seed(0))
    late = s.sample_timesteps(20000, 100, torch.Generator().manual_seed(0))
    assert early.shape == (20000,) and early.dtype == torch.int64
    assert (early.min(), early.max(), late.min(), late.max()) == (20, 980, 20, 500)
    assert len(early.unique()) == 961  # every t in [20, 980], one per sample
    assert torch.equal(s.sample_timesteps(5, 0, torch.Generator().manual_seed(3)),
                       s.sample_timesteps(5, 0, torch.Generator().manual_seed(3)))  # fmt: skip
    with pytest.raises(ConfigError, match="t_min <= t_max_annealed <= t_max"):
        vsd.TimestepSchedule(t_min=600)


def test_decreasing_timestep_schedule_falls_from_t_max_to_t_min_within_its_band():
    """--vsd.t-schedule decreasing: the band's centre falls linearly from t_max at step 0 to t_min at the last step,
    each sample within +-jitter of it and inside [t_min, t_max]; annealing plays no part."""
    s = vsd.TimestepSchedule(kind="decreasing", total_steps=101, jitter=20, anneal_step=10)
    assert s.timestep_bounds(0) == (960, 980)
    assert s.timestep_bounds(50) == (480, 520)
    assert s.timestep_bounds(100) == s.timestep_bounds(500) == (20, 40)
    centres = [sum(s.timestep_bounds(i)) / 2 for i in range(1, 100)]
    assert all(a > b for a, b in zip(centres, centres[1:]))  # strictly falling, past annealing's step 10
    t = s.sample_timesteps(5000, 50, torch.Generator().manual_seed(0))
    assert (t.min(), t.max()) == (480, 520) and len(t.unique()) == 41
    assert vsd.TimestepSchedule(kind="decreasing", total_steps=1, jitter=0).timestep_bounds(0) == (980, 980)
    with pytest.raises(ConfigError, match="unknown timestep schedule"):
        vsd.TimestepSchedule(kind="falling", total_steps=10)
    with pytest.raises(ConfigError, match="needs the run's length"):
        vsd.TimestepSchedule(kind="decreasing")
