"""The diffusion prior of VSD: the frozen text-to-image model (eps_pretrained) and phi (eps_phi).

phi is ProlificDreamer's variational score model: a LoRA (peft) on the pretrained UNet plus a camera
embedding added to the UNet's time embedding (official lora_unet.py:415-419, 633-636; threestudio
stable_diffusion_vsd_guidance.py:152-187). By default phi lives on the *same* UNet and is switched on only
inside `_phi()`, so one UNet is in memory and the pretrained path runs the untouched base weights.
Optionally phi sits on a separate base model (the official code puts it on SD 2.1, v-prediction).

Shapes: B batch, C latent channels (3 for a pixel-space prior), h x w latent size, L tokens, D text width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splatdreamer.cameras import VIEW_LABELS
from splatdreamer.errors import ConfigError, PriorLoadError
from splatdreamer.prior import loading
from splatdreamer.prior.text import TextEmbeddings, view_prompt

PREDICTION_TYPES = ("epsilon", "v_prediction")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The LoRA of threestudio/official (q, k, v and out of every attention), in peft's names; notes/vsd.md §4.2.
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def _abar(alphas_cumprod: Tensor, t: Tensor, ndim: int) -> Tensor:
    """[B] timesteps -> [B, 1, ...] abar_t broadcastable against a [B, ...] tensor of `ndim` dims."""
    return alphas_cumprod[t].view(-1, *([1] * (ndim - 1)))


def to_epsilon(output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str, alphas_cumprod: Tensor) -> Tensor:
    """The one place a UNet output becomes epsilon. [B, ...] -> [B, ...].

    v-prediction (Salimans & Ho 2022): v = sqrt(abar) eps - sqrt(1 - abar) x0 and x_t = sqrt(abar) x0 +
    sqrt(1 - abar) eps give eps = sqrt(abar) v + sqrt(1 - abar) x_t (official nerf/sd.py:134-143).
    """
    if prediction_type == "epsilon":
        return output
    abar = _abar(alphas_cumprod, t, x_t.ndim)
    return abar.sqrt() * output + (1.0 - abar).sqrt() * x_t


def resize_renders(images: Tensor, resolution: int) -> Tensor:
    """[B, C, H, W] -> [B, C, resolution, resolution]: bilinear, no antialiasing (threestudio l.609-611), as the
    loop hands its renders to a prior; by exactly 2 down it is the 2 x 2 mean (`toy train --data.supersample`)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, (resolution, resolution), mode="bilinear", align_corners=False, antialias=False)


class DiffusionPrior:
    """eps_pretrained (frozen UNet, CFG) and eps_phi (LoRA + camera embedding) for score distillation.

    Public attributes: `resolution` (pixel size of the images the prior expects), `device`, `dtype` (of the
    frozen weights), `num_train_timesteps`, `alphas_cumprod` ([T] fp32 on `device`), `prediction_type`,
    `unet`, `text_encoder`, `tokenizer`, `vae` (None for a pixel-space prior), `camera_embedding`.
    """

    def __init__(
        self,
        unet: nn.Module,  # diffusers UNet2DConditionModel
        text_encoder: nn.Module,  # transformers CLIPTextModel
        tokenizer,  # transformers CLIPTokenizer
        scheduler,  # any diffusers scheduler whose config holds the training noise schedule
        vae: nn.Module | None = None,  # diffusers AutoencoderKL; None = pixel space
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        lora_rank: int = 4,
        camera_dim: int = 16,
        phi_unet: nn.Module | None = None,
        phi_scheduler=None,
        camera_init: str = "default",
    ) -> None:
        """Wrap loaded components (`from_pretrained` is the usual door); they are frozen and moved to `device`,
        and phi's adapter is added to the UNet in place.

        phi_unet / phi_scheduler: a separate base model for phi (same latent space and text width as `unet`,
        same noise schedule); None = the LoRA goes on `unet` itself.
        camera_init: "default" (PyTorch's init of the camera embedding, as the official code and threestudio) or
        "zero" (its last layer zeroed, so phi starts exactly as the base model).
        """
        from diffusers import DDPMScheduler
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.device = torch.device(device)
        self.dtype = _resolve_dtype(self.device, dtype)
        if lora_rank <= 0:
            raise ConfigError(f"the LoRA rank of phi must be positive, got {lora_rank}")
        # The training schedule (betas and prediction type), whichever sampler the directory names.
        scheduler = DDPMScheduler.from_config(scheduler.config)
        self.prediction_type = _prediction_type(scheduler)
        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)  # [T]

        self.tokenizer = tokenizer
        self.unet = _frozen(unet, self.device, self.dtype)
        self.text_encoder = _frozen(text_encoder, self.device, self.dtype)
        self.vae = None if vae is None else _frozen(vae, self.device, self.dtype)
        # The latent grid is the image downsampled by 2 per VAE level after the first (SD: 8).
        self.vae_factor = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution: int = _sample_size(unet) * self.vae_factor

        if phi_unet is None:
            self.phi_unet, self.phi_prediction_type = self.unet, self.prediction_type
        else:
            phi_scheduler = DDPMScheduler.from_config(phi_scheduler.config)
            _check_phi_base(unet, phi_unet, scheduler, phi_scheduler)
            self.phi_unet = _frozen(phi_unet, self.device, self.dtype)
            self.phi_prediction_type = _prediction_type(phi_scheduler)

        # phi = LoRA (A ~ N(0, 1/r), B = 0, scaling alpha/r = 1: the old diffusers LoRAAttnProcessor's init,
        # notes/vsd.md §4.2) with fp32 master weights on the possibly half-precision UNet.
        self.phi_unet.add_adapter(
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )
        self._lora = [p for name, p in self.phi_unet.named_parameters() if "lora_" in name]
        self._adapter_layers = [m for m in self.phi_unet.modules() if isinstance(m, BaseTunerLayer)]
        self._adapter_flag = all(
            isinstance(getattr(m, "_disable_adapters", None), bool) and m.disable_adapters == m._disable_adapters
            for m in self._adapter_layers
        )
        for param in self._lora:
            param.data = param.data.float()
        # The flattened camera-to-world matrix -> the time-embedding space (threestudio l.152-156; the
        # official camera_emb is the same Linear-SiLU-Linear). Default init, as both; fp32 weights.
        time_dim = self.phi_unet.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(camera_dim, time_dim).to(self.device)
        if camera_init == "zero":
            nn.init.zeros_(self.camera_embedding.linear_2.weight)
            nn.init.zeros_(self.camera_embedding.linear_2.bias)
        elif camera_init != "default":
            raise ConfigError(f"unknown camera_init {camera_init!r}; use 'default' or 'zero'")
        self.camera_dim = camera_dim
        self._phi_off()
        self._text_cache: dict[tuple[str, str], TextEmbeddings] = {}

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        lora_rank: int = 4,
        camera_dim: int = 16,
        phi_base: str | Path | None = None,
        camera_init: str = "default",
    ) -> "DiffusionPrior":
        """Load a diffusers Stable Diffusion 1.x/2.x directory, or a hub id already in the local HF cache.

        The directory holds model_index.json, unet/, text_encoder/, tokenizer/, scheduler/ and optionally
        vae/; without vae/ it is a pixel-space prior (UNet on 3-channel images in [-1, 1]), like the toy prior.
        dtype: of the frozen UNet / text encoder / VAE; None = float16 on CUDA, float32 elsewhere (LoRA and
            camera embedding are always float32).
        phi_base: another SD directory or cached hub id whose UNet carries phi (e.g. the official setup:
            SD 2.1-base pretrained, SD 2.1 v-prediction for phi); it costs a second UNet in memory.
        Raises `PriorLoadError` (path, layout, cache, model kind) with the ways out in its message.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        dtype = _resolve_dtype(torch.device(device), dtype)
        layout = loading.check(loading.resolve(path_or_hub_id))
        phi_layout = None if phi_base is None else loading.check(loading.resolve(phi_base), phi_base=True)
        d, variant = layout.directory, layout.variant
        with converting_load_errors(d):
            unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", torch_dtype=dtype, variant=variant)
            text_encoder = CLIPTextModel.from_pretrained(d, subfolder="text_encoder", dtype=dtype, variant=variant)
            tokenizer = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
            scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(d, subfolder="scheduler"))
            vae = None
            if layout.has_vae:
                vae = AutoencoderKL.from_pretrained(d, subfolder="vae", torch_dtype=dtype, variant=variant)
        phi_unet = phi_scheduler = None
        if phi_layout is not None:
            d, variant = phi_layout.directory, phi_layout.variant
            with converting_load_errors(d):
                phi_unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", torch_dtype=dtype, variant=variant)
                phi_scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(d, subfolder="scheduler"))
        return cls(
            unet, text_encoder, tokenizer, scheduler, vae, device=device, dtype=dtype, lora_rank=lora_rank,
            camera_dim=camera_dim, phi_unet=phi_unet, phi_scheduler=phi_scheduler, camera_init=camera_init,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """[N] prompts -> [N, L, D] last hidden states of the text encoder (what SD 1.x/2.x cross-attend to)."""
        length = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def token_count(self, prompt: str) -> tuple[int, int]:
        """(tokens `prompt` takes with BOS and EOS, tokens the text encoder reads); `encode_text` cuts the rest."""
        length = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        return len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids), length

    def text_embeddings(self, prompt: str, negative_prompt: str = "") -> TextEmbeddings:
        """The prompt, the negative prompt and f"{prompt}, {label} view" per view label; encoded once, cached."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"the prompt is empty ({prompt!r}); describe the object, e.g. --prompt 'a red ball'")
        key = (prompt, negative_prompt)
        if key not in self._text_cache:
            emb = self.encode_text([prompt, negative_prompt, *(view_prompt(prompt, v) for v in VIEW_LABELS)])
            self._text_cache[key] = TextEmbeddings(
                cond=emb[0:1], uncond=emb[1:2], view={v: emb[2 + i : 3 + i] for i, v in enumerate(VIEW_LABELS)}
            )
        return self._text_cache[key]

    # ------------------------------------------------------------------------------------------- images
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, C, h, w] fp32 latents (for a pixel-space prior: the image in [-1, 1]).

        Resized (bilinear, no antialiasing, as threestudio l.609-611) to `resolution`; encoded with a VAE
        posterior *sample* times the scaling factor (official nerf/sd.py:203-211). Differentiable: the score
        gradient flows back to the renders. `generator` (on `device`) makes the sample reproducible.
        """
        assert images.ndim == 4 and images.shape[1] == 3, images.shape
        x = resize_renders(images, self.resolution) * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return (posterior.sample(generator=generator) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, 3, resolution, resolution] images in [0, 1], for previews."""
        x = latents
        if self.vae is not None:
            x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------------- noise
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, ...], t [B] int on `device`."""
        abar = _abar(self.alphas_cumprod, t, x0.ndim)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    # ------------------------------------------------------------------------------------------- scores
    @torch.no_grad()
    def eps_pretrained(
        self, x_t: Tensor, t: Tensor, text_cond: Tensor, text_uncond: Tensor, cfg_scale: float | Tensor
    ) -> Tensor:
        """Epsilon of the frozen model with classifier-free guidance: eps_u + s (eps_c - eps_u).

        x_t [B, C, h, w], t [B], text_cond / text_uncond [B, L, D] -> [B, C, h, w] fp32; cfg_scale a float or
        [B], one per sample. One UNet call on 2B samples in (uncond, cond) order (official nerf/sd.py:116-126);
        phi's adapter is off, no camera enters. At a scale of exactly 1 (a float) the guided score is eps_c
        itself, and the UNet runs on the B conditional samples alone.
        """
        b = x_t.shape[0]
        if not isinstance(cfg_scale, Tensor) and cfg_scale == 1.0:
            out = self._run(self.unet, x_t, t, text_cond)
            return to_epsilon(out, x_t, t, self.prediction_type, self.alphas_cumprod)
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
        out = self._run(self.unet, x2, t2, torch.cat([text_uncond, text_cond]))
        eps_u, eps_c = to_epsilon(out, x2, t2, self.prediction_type, self.alphas_cumprod).split(b)
        if isinstance(cfg_scale, Tensor):
            cfg_scale = cfg_scale.to(eps_u).view(-1, *([1] * (eps_u.ndim - 1)))
        return eps_u + cfg_scale * (eps_c - eps_u)

    @torch.no_grad()
    def eps_phi(self, x_t: Tensor, t: Tensor, text_cond: Tensor, camera: Tensor, cfg_scale: float = 1.0) -> Tensor:
        """Epsilon of phi given each sample's camera condition.

        x_t [B, C, h, w], t [B], text_cond [B, L, D] (the plain prompt), camera [B, camera_dim] -> [B, C, h, w].
        At cfg_scale 1 only the camera-conditioned pass runs (threestudio guidance_scale_lora 1.0: the
        zero-camera pass cancels); otherwise eps_0 + s (eps_cam - eps_0) with the camera zeroed in eps_0
        (threestudio l.530-538), in one call of 2B.
        """
        if cfg_scale == 1.0:
            return self._eps_phi_raw(x_t, t, text_cond, camera)
        b = x_t.shape[0]
        both = self._eps_phi_raw(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text_cond, text_cond]),
            torch.cat([camera, torch.zeros_like(camera)]),
        )  # fmt: skip
        eps_cam, eps_free = both.split(b)
        return eps_free + cfg_scale * (eps_cam - eps_free)

    def phi_loss(
        self,
        x0: Tensor,
        text_cond: Tensor,
        camera: Tensor,
        generator: torch.Generator | None = None,
        camera_dropout: float = 0.1,
        t: Tensor | None = None,
        t_min: int = 0,
    ) -> Tensor:
        """phi's denoising loss on the (detached) clean latents: a fp32 scalar whose gradient reaches only phi.

        x0 [B, C, h, w] (the renders' latents of this step), text_cond [B, L, D], camera [B, camera_dim].
        Fresh t ~ U{t_min..T-1} per sample unless `t` [B] is given, and fresh noise (threestudio l.570-576; official
        utils.py:1101); the camera is zeroed for the whole batch with probability `camera_dropout` (official
        --uncond_p 0.1), so phi also learns the camera-free score. Target: the noise, or the velocity for a
        v-prediction base. `generator` lives on `device`; it draws t, then the noise, then the dropout coin.
        """
        if not 0 <= t_min < self.num_train_timesteps:
            raise ValueError(f"t_min={t_min} is outside the prior's timesteps 0..{self.num_train_timesteps - 1}")
        x0 = x0.detach().float()
        b = x0.shape[0]
        if t is None:
            t = torch.randint(t_min, self.num_train_timesteps, (b,), generator=generator, device=self.device)
        else:
            t = t.to(self.device)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        drop = torch.rand((), generator=generator, device=self.device) < camera_dropout
        camera = torch.where(drop, torch.zeros_like(camera), camera)
        x_t = self.add_noise(x0, noise, t)
        if self.phi_prediction_type == "epsilon":
            target = noise
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (diffusers DDPMScheduler.get_velocity)
            abar = _abar(self.alphas_cumprod, t, x0.ndim)
            target = abar.sqrt() * noise - (1.0 - abar).sqrt() * x0
        return F.mse_loss(self._run_phi(x_t, t, text_cond, camera), target)

    # ------------------------------------------------------------------------------------------- phi's weights
    def phi_parameters(self) -> list[nn.Parameter]:
        """Everything phi trains: the LoRA weights and the camera embedding (fp32); all else is frozen."""
        return self._lora + list(self.camera_embedding.parameters())

    def phi_state_dict(self) -> dict[str, Tensor]:
        """phi's weights for a checkpoint: "lora.<UNet parameter name>" and "camera.<name>" -> tensor copies."""
        return {name: p.detach().clone() for name, p in self._phi_named_parameters().items()}

    def load_phi_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `phi_state_dict()`; raises ConfigError if it was saved for another model or LoRA rank."""
        params = self._phi_named_parameters()
        mismatched = sorted(
            set(params) ^ set(state) | {n for n in set(params) & set(state) if params[n].shape != state[n].shape}
        )
        if mismatched:
            raise ConfigError(
                f"the checkpoint's phi does not fit this prior ({len(mismatched)} tensors differ, e.g. "
                f"{mismatched[0]!r}): it was saved with another model or LoRA rank; resume with the same "
                "--prior settings"
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    # ------------------------------------------------------------------------------------------- internals
    def _phi_named_parameters(self) -> dict[str, nn.Parameter]:
        named = {f"lora.{n}": p for n, p in self.phi_unet.named_parameters() if "lora_" in n}
        named.update({f"camera.{n}": p for n, p in self.camera_embedding.named_parameters()})
        return named

    def _run(self, unet: nn.Module, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None = None) -> Tensor:
        """One UNet call in the weights' dtype; the output back in fp32. camera -> `class_labels`."""
        out = unet(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype), class_labels=camera).sample
        return out.float()

    def _run_phi(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """phi's raw output (epsilon or v) for camera [B, camera_dim]; differentiable w.r.t. phi's weights."""
        assert camera.shape == (x_t.shape[0], self.camera_dim), (camera.shape, x_t.shape)
        with self._phi():
            return self._run(self.phi_unet, x_t, t, text, camera.float())

    def _eps_phi_raw(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        out = self._run_phi(x_t, t, text, camera)
        return to_epsilon(out, x_t, t, self.phi_prediction_type, self.alphas_cumprod)

    @contextlib.contextmanager
    def _phi(self) -> Iterator[None]:
        """Within: `phi_unet` is phi (LoRA on; the camera embedding is its class embedding, so diffusers adds
        it to the time embedding, unet_2d_condition.py get_class_embed). Outside: the plain base UNet."""
        self._set_adapters(True)
        self.phi_unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            self._phi_off()

    def _phi_off(self) -> None:
        self.phi_unet.class_embedding = None
        self._set_adapters(False)

    def _set_adapters(self, on: bool) -> None:
        """Switch every LoRA layer of `phi_unet` on or off; called twice per phi pass, so it must be cheap.

        peft's public switch (`enable_adapters`, per layer or through diffusers) walks each layer's modules and
        flips requires_grad, which took 9 ms per on/off pair on the --tiny UNet of scripts/bench_step.py; the
        flag it sets, `_disable_adapters`, is what a LoRA layer's forward reads (its `disable_adapters`
        property), and setting it directly takes 0.3 ms. If a peft version lacks the flag, the public switch
        is used. tests/test_prior.py checks both sides: the base path bit-exact, phi's path changed.
        """
        if self._adapter_flag:
            for layer in self._adapter_layers:
                layer._disable_adapters = not on
            return
        for layer in self._adapter_layers:
            layer.enable_adapters(on)
        # peft freezes adapter weights when it disables them; phi's loss is backpropagated after the adapter
        # is off again, and a frozen leaf would drop its gradient. A disabled layer never reads them.
        for param in self._lora:
            param.requires_grad_(True)


@contextlib.contextmanager
def converting_load_errors(directory: Path) -> Iterator[None]:
    """What diffusers/transformers raise on a corrupt or mismatched directory -> one PriorLoadError."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise PriorLoadError(
            f"{directory} looks like a Stable Diffusion directory but could not be loaded: {str(e).rstrip('. ')}. "
            f"{loading.WAYS_OUT}"
        ) from None


def _resolve_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """None -> float16 on CUDA (threestudio half_precision_weights), float32 on CPU (DESIGN.md)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"the prior's dtype must be one of float32, float16, bfloat16; got {dtype}")
    return dtype


def _frozen(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    if next(module.parameters()).dtype != dtype:  # loaded in another dtype (a component built in memory)
        module.to(dtype=dtype)
    return module.to(device)


def _prediction_type(scheduler) -> str:
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise PriorLoadError(
            f"the prior's scheduler predicts {kind!r}; splatdreamer supports {' and '.join(PREDICTION_TYPES)}. "
            f"{loading.WAYS_OUT}"
        )
    return kind


def _sample_size(unet: nn.Module) -> int:
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise PriorLoadError(f"the prior's UNet has a non-square sample size {size}. {loading.WAYS_OUT}")
        size = size[0]
    return int(size)


def _check_phi_base(unet: nn.Module, phi_unet: nn.Module, scheduler, phi_scheduler) -> None:
    """phi's separate base sees the pretrained model's latents, text states and noisy x_t, so those must agree."""
    problems = []
    for key in ("in_channels", "out_channels", "cross_attention_dim"):
        if unet.config[key] != phi_unet.config[key]:
            problems.append(f"{key} {phi_unet.config[key]} vs {unet.config[key]}")
    same_schedule = scheduler.config.num_train_timesteps == phi_scheduler.config.num_train_timesteps and torch.allclose(
        scheduler.alphas_cumprod, phi_scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7
    )
    if not same_schedule:
        problems.append("a different noise schedule")
    if problems:
        raise PriorLoadError(
            f"phi's base model does not fit the pretrained model ({'; '.join(problems)}): it must share the latent "
            f"space, the text encoder's width and the noise schedule (SD 2.1 with SD 2.1-base does). {loading.WAYS_OUT}"
        )
