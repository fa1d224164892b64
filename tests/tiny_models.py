"""Tiny diffusers Stable-Diffusion-layout models with random weights, written to a directory for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "green", "ball", "cube", "cone", "two-tone", "front", "side", "back", "overhead", "view", ","]


def write_tokenizer(directory: Path, max_length: int = 32) -> None:
    """A CLIP tokenizer over a handful of whole words (each word one token, no merges needed)."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for ch in sorted({c for w in WORDS for c in w}):  # single characters so unknown words still tokenize
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(directory)


def build_tiny_sd(
    directory: Path,
    prediction_type: str = "epsilon",
    with_vae: bool = False,
    sample_size: int = 8,
    seed: int = 0,
) -> Path:
    """Write a tiny SD-layout model to `directory` and return it.

    Pixel space (in_channels 3) without a VAE; 4 latent channels with a tiny AutoencoderKL otherwise.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    directory = Path(directory)
    channels = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    unet.save_pretrained(directory / "unet")
    write_tokenizer(directory / "tokenizer")
    from transformers import CLIPTokenizer

    vocab = len(CLIPTokenizer.from_pretrained(directory / "tokenizer"))
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )
    text.save_pretrained(directory / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(directory / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    if with_vae:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=sample_size * 2,
        )
        vae.save_pretrained(directory / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory
