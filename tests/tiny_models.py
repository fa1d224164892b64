"""Tiny Stable-Diffusion-layout models with random weights, saved as ordinary diffusers directories.

Every test that needs a prior builds one of these and loads it through `DiffusionPrior.from_pretrained`,
the same path a real Stable Diffusion directory takes; nothing is mocked. Reusable from any test:

    from tiny_models import build_tiny_sd
    prior_dir = build_tiny_sd(tmp_path / "sd")                       # pixel space, epsilon
    prior_dir = build_tiny_sd(tmp_path / "sd", with_vae=True)       # latent, 4 channels, VAE factor 2
    prior_dir = build_tiny_sd(tmp_path / "sd", prediction_type="v_prediction")

The layout is what `StableDiffusionPipeline.save_pretrained` writes (model_index.json, unet/,
text_encoder/, tokenizer/ with vocab.json + merges.txt, scheduler/, optional vae/); a prior without
vae/ denoises images in [-1, 1] directly, as the project's toy prior does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Whole words of the toy prompts and of their view-dependent forms ("a red ball, front view").
WORDS = (
    "a", "red", "blue", "green", "ball", "cube", "cone", "two", "tone", "front", "side", "back", "overhead", "view",
)  # fmt: skip
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


def write_tokenizer(directory: Path, max_length: int = 16) -> Path:
    """A CLIP BPE tokenizer (vocab.json + merges.txt) in which each of WORDS is one token.

    CLIP splits a word into characters with END_OF_WORD on the last one and then applies merges by rank;
    the merges below build every word left to right, so "red" -> r e d</w> -> re d</w> -> red</w>.
    Characters of other words stay separate tokens, so any lower-case prompt still tokenizes.
    """
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for special in (BOS, EOS):
        add(special)
    for ch in "abcdefghijklmnopqrstuvwxyz,-":
        add(ch)
        add(ch + END_OF_WORD)
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            add(merged)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length, pad_token=EOS
    )
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_sd(
    directory: Path | str,
    prediction_type: str = "epsilon",
    with_vae: bool = False,
    sample_size: int = 8,
    cross_attention_dim: int = 16,
    seed: int = 0,
    variant: str | None = None,
) -> Path:
    """Write a tiny Stable Diffusion directory to `directory` and return its path.

    prediction_type: "epsilon" or "v_prediction" (the scheduler config's, as SD 2.1-base vs SD 2.1).
    with_vae: False = pixel space (UNet in/out 3 channels, no vae/); True = 4 latent channels and a tiny
        AutoencoderKL with downsampling factor 2, so images are 2 * sample_size pixels.
    cross_attention_dim: width of the text encoder = the UNet's cross-attention width.
    seed: the random weights; two calls with the same arguments write identical models.
    variant: save weights as e.g. `diffusion_pytorch_model.fp16.safetensors`, as hub repos offer them.
    The noise schedule is Stable Diffusion's (scaled_linear, beta 0.00085 -> 0.012, 1000 steps).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    channels = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    unet.save_pretrained(directory / "unet", variant=variant)

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(directory / "tokenizer"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder.save_pretrained(directory / "text_encoder", variant=variant)

    schedule = dict(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type,
    )  # fmt: skip
    # Hub SD directories name an inference sampler (PNDM for SD 1.x); the loader must still read the
    # training schedule from it, so the latent model is saved with one.
    scheduler = PNDMScheduler(**schedule, skip_prk_steps=True) if with_vae else DDPMScheduler(**schedule)
    scheduler.save_pretrained(directory / "scheduler")

    # As StableDiffusionPipeline.save_pretrained writes it: absent optional components are [null, null].
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    if with_vae:
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            norm_num_groups=4,
            sample_size=2 * sample_size,
        )
        vae.save_pretrained(directory / "vae", variant=variant)
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory
