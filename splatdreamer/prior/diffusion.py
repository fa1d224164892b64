"""The diffusion prior: a frozen text-to-image UNet (eps_pretrained) and phi, a LoRA on the same UNet with a
camera embedding (eps_phi). One UNet is in memory; phi is the peft adapter toggled on and off.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from splatdreamer.cameras import VIEW_LABELS
from splatdreamer.errors import ConfigError, PriorLoadError

REQUIRED_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # threestudio / official: LoRA on q, k, v and out
WAYS_OUT = (
    "Pass a local diffusers Stable Diffusion directory (--prior.name /path/to/dir), download the model into "
    "the Hugging Face cache on a machine with network access (huggingface-cli download <id>), "
    "or use the embedded toy prior (--prior.name toy, or --preset toy), which runs anywhere."
)


@dataclass
class TextEmbeddings:
    """Encoded prompts for one (prompt, negative prompt) pair; each tensor is [1, L, D]."""

    cond: Tensor  # the plain prompt (phi's text condition, ProlificDreamer utils.py)
    uncond: Tensor  # the negative prompt (CFG's unconditional branch)
    view: dict[str, Tensor] = field(default_factory=dict)  # f"{prompt}, {label} view" per view label

    def plain(self, batch: int) -> Tensor:
        return self.cond.expand(batch, -1, -1)

    def negative(self, batch: int) -> Tensor:
        return self.uncond.expand(batch, -1, -1)

    def for_views(self, labels: list[str]) -> Tensor:
        """[B, L, D] the view-dependent prompt of each camera."""
        return torch.cat([self.view[label] for label in labels])


def _resolve_directory(name: str) -> Path:
    """A local directory as is; a hub id through the offline HF cache only (no downloads, ever)."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PriorLoadError(f"the prior {name!r} is a file, not a diffusers model directory. {WAYS_OUT}")
        return path
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name
    if looks_like_path:
        raise PriorLoadError(f"the prior directory {name!r} does not exist. {WAYS_OUT}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise PriorLoadError(
            f"the hub model {name!r} is not in the local Hugging Face cache, and splatdreamer does not download "
            f"weights during a run. {WAYS_OUT}"
        ) from None


def _check_layout(directory: Path) -> bool:
    """Raise unless `directory` holds a Stable Diffusion layout; return whether it has a VAE."""
    missing = [part for part in REQUIRED_PARTS if not (directory / part).is_dir()]
    if missing:
        raise PriorLoadError(
            f"{directory} is not a diffusers Stable Diffusion directory: it has no {', '.join(p + '/' for p in missing)} "
            f"(expected {', '.join(p + '/' for p in REQUIRED_PARTS)} and optionally vae/). {WAYS_OUT}"
        )
    config_path = directory / "unet" / "config.json"
    try:
        kind = json.loads(config_path.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as e:
        raise PriorLoadError(f"cannot read {config_path}: {e}. {WAYS_OUT}") from None
    if kind != "UNet2DConditionModel":
        raise PriorLoadError(
            f"{directory} holds a {kind}, not a UNet2DConditionModel: splatdreamer supports Stable Diffusion "
            f"1.x/2.x-style priors. {WAYS_OUT}"
        )
    return (directory / "vae").is_dir()


class DiffusionPrior:
    """eps_pretrained (frozen UNet, CFG) and eps_phi (LoRA + camera embedding on the same UNet)."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae, device, dtype, lora_rank: int, camera_dim: int):
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        if scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise PriorLoadError(
                f"the prior predicts {scheduler.config.prediction_type!r}; splatdreamer supports "
                f"{' and '.join(PREDICTION_TYPES)}. {WAYS_OUT}"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)

        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        self.unet = unet.to(self.device, dtype)
        self.text_encoder = text_encoder.to(self.device, dtype)
        self.vae = None if vae is None else vae.to(self.device, dtype)
        self.vae_factor = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = unet.config.sample_size * self.vae_factor

        # phi: LoRA (peft) in fp32 master weights on the (possibly fp16) UNet; notes/vsd.md §4.
        self.unet.add_adapter(
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )
        self._lora = [p for name, p in self.unet.named_parameters() if "lora_" in name]
        for param in self._lora:
            param.data = param.data.float()
        self._disable_phi()
        # Camera condition -> time-embedding space, as threestudio's TimestepEmbedding(16, 1280); fp32 weights.
        time_dim = self.unet.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(camera_dim, time_dim).to(self.device)
        self._text_cache: dict[tuple[str, str], TextEmbeddings] = {}

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        lora_rank: int = 4,
        camera_dim: int = 16,
    ) -> "DiffusionPrior":
        """Load a diffusers Stable Diffusion 1.x/2.x directory (or cached hub id); no VAE = pixel space.

        dtype None = float16 on CUDA, float32 on CPU.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        if lora_rank <= 0:
            raise ConfigError(f"the LoRA rank must be positive, got {lora_rank}")
        directory = _resolve_directory(str(name))
        has_vae = _check_layout(directory)
        try:
            unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet")
            text_encoder = CLIPTextModel.from_pretrained(directory, subfolder="text_encoder")
            tokenizer = CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer")
            # The training schedule (betas, prediction type), whatever sampler the directory names.
            scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(directory, subfolder="scheduler"))
            vae = AutoencoderKL.from_pretrained(directory, subfolder="vae") if has_vae else None
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise PriorLoadError(f"{directory} could not be loaded as a Stable Diffusion prior: {e}. {WAYS_OUT}") from None
        return cls(unet, text_encoder, tokenizer, scheduler, vae, device, dtype, lora_rank, camera_dim)

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """[B] prompts -> [B, L, D] last hidden states of the text encoder."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def text_embeddings(self, prompt: str, negative_prompt: str = "") -> TextEmbeddings:
        """The prompt, its negative and its view-dependent variants, encoded once and cached."""
        if not prompt.strip():
            raise ConfigError("the prompt is empty; give one, e.g. --prompt 'a red ball'")
        key = (prompt, negative_prompt)
        if key not in self._text_cache:
            views = [f"{prompt}, {label} view" for label in VIEW_LABELS]  # official nerf/utils.py prompt form
            emb = self.encode_text([prompt, negative_prompt, *views])
            self._text_cache[key] = TextEmbeddings(
                cond=emb[0:1], uncond=emb[1:2], view={label: emb[2 + i : 3 + i] for i, label in enumerate(VIEW_LABELS)}
            )
        return self._text_cache[key]

    # ---------------------------------------------------------------- images
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, C, h, w] fp32 latents (pixels in [-1, 1] for a pixel-space prior).

        Differentiable: the VSD gradient flows back through the VAE encoder to the renders.
        """
        assert images.ndim == 4 and images.shape[1] == 3, images.shape
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = images * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return (posterior.sample(generator=generator) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, 3, H, W] images in [0, 1]."""
        if self.vae is not None:
            latents = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- noise
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def to_epsilon(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The one place a v-prediction becomes an epsilon: eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
        if self.prediction_type == "epsilon":
            return output
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        return abar.sqrt() * output + (1.0 - abar).sqrt() * x_t

    def _unet(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None = None) -> Tensor:
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype), class_labels=camera).sample
        return out.float()

    def _disable_phi(self) -> None:
        self.unet.class_embedding = None
        self.unet.disable_adapters()
        # peft also freezes the adapter when disabling it; phi's loss is often backpropagated after the
        # adapter is off again, so the LoRA weights must stay trainable (a disabled layer ignores them).
        for param in self._lora:
            param.requires_grad_(True)

    @contextlib.contextmanager
    def _phi(self):
        """Within: the UNet is phi (LoRA on, camera embedding in the time embedding)."""
        self.unet.enable_adapters()
        self.unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            self._disable_phi()

    # ---------------------------------------------------------------- scores
    @torch.no_grad()
    def eps_pretrained(self, x_t: Tensor, t: Tensor, text_cond: Tensor, text_uncond: Tensor, cfg_scale: float) -> Tensor:
        """[B, ...] -> epsilon of the frozen model with classifier-free guidance: e_u + s (e_c - e_u).

        One UNet call on 2B samples; the adapter is off and no camera enters.
        """
        b = x_t.shape[0]
        out = self._unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text_uncond, text_cond]))
        eps_u, eps_c = self.to_epsilon(out, torch.cat([x_t, x_t]), torch.cat([t, t])).split(b)
        return eps_u + cfg_scale * (eps_c - eps_u)

    @torch.no_grad()
    def eps_phi(self, x_t: Tensor, t: Tensor, text_cond: Tensor, camera: Tensor, cfg_scale: float = 1.0) -> Tensor:
        """Epsilon of phi given the camera ([B, 16]). At scale 1 the camera-free pass is skipped (threestudio
        guidance_scale_lora 1.0); otherwise e_0 + s (e_cam - e_0) with the camera zeroed in e_0."""
        camera = camera.float()
        with self._phi():
            if cfg_scale == 1.0:
                return self.to_epsilon(self._unet(x_t, t, text_cond, camera), x_t, t)
            b = x_t.shape[0]
            x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
            out = self._unet(x2, t2, torch.cat([text_cond, text_cond]), torch.cat([camera, torch.zeros_like(camera)]))
            eps_cam, eps_free = self.to_epsilon(out, x2, t2).split(b)
        return eps_free + cfg_scale * (eps_cam - eps_free)

    def phi_loss(
        self,
        x0: Tensor,
        text_cond: Tensor,
        camera: Tensor,
        generator: torch.Generator | None = None,
        camera_dropout: float = 0.1,
    ) -> Tensor:
        """phi's ordinary diffusion loss on detached renders at fresh t ~ U{0..T-1} and noise.

        The camera is zeroed for the whole batch with probability `camera_dropout` (official: uncond_p 0.1),
        so phi also learns the camera-free score. The target is the noise or the velocity, per the model.
        """
        x0 = x0.detach().float()
        b = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=self.device)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        drop = torch.rand((), generator=generator, device=self.device) < camera_dropout
        camera = torch.where(drop, torch.zeros_like(camera), camera).float()
        x_t = self.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            abar = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
            target = abar.sqrt() * noise - (1.0 - abar).sqrt() * x0
        with self._phi():
            pred = self._unet(x_t, t, text_cond, camera)
        return F.mse_loss(pred, target)

    # ---------------------------------------------------------------- phi's parameters
    def phi_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA weights and the camera embedding: all phi trains."""
        return self._lora + list(self.camera_embedding.parameters())

    def phi_state_dict(self) -> dict[str, Tensor]:
        state = {f"unet.{n}": p.detach().clone() for n, p in self.unet.named_parameters() if "lora_" in n}
        state.update({f"camera.{n}": p.detach().clone() for n, p in self.camera_embedding.named_parameters()})
        return state

    def load_phi_state_dict(self, state: dict[str, Tensor]) -> None:
        params = {f"unet.{n}": p for n, p in self.unet.named_parameters() if "lora_" in n}
        params.update({f"camera.{n}": p for n, p in self.camera_embedding.named_parameters()})
        if set(params) != set(state):
            raise ConfigError("the checkpoint's phi does not match this prior (another model or LoRA rank)")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])
