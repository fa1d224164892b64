"""The toy prior's components, built from scratch and saved in the Stable Diffusion directory layout.

A pixel-space prior (no `vae/`): the UNet denoises [B, 3, 32, 32] images in [-1, 1], conditioned by
cross-attention on a tiny CLIP text encoder whose tokenizer knows only the toy world's words.

    prior/
      model_index.json           as StableDiffusionPipeline writes it, minus vae / safety_checker / feature_extractor
      unet/                      UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
      text_encoder/              CLIPTextModel (config.json + model.safetensors)
      tokenizer/                 CLIPTokenizer over the toy vocabulary (vocab.json, merges.txt, ...)
      scheduler/                 DDPMScheduler (scheduler_config.json)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from splatdreamer.cameras import VIEW_LABELS
from splatdreamer.toy.objects import PROMPTS

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"  # also padding and the unknown token, as in Stable Diffusion 1.x's tokenizer
END_OF_WORD = "</w>"
TRAIN_TIMESTEPS = 1000  # the DDPM schedule's length (Ho et al. 2020)


@dataclass
class ToyPriorParts:
    """The four trainable / configurable pieces of a toy prior, in memory."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler


@dataclass
class ToyModelConfig:
    """Sizes of the toy prior."""

    resolution: int = 32
    """Image side in pixels; the UNet halves it len(block_out_channels) - 1 times."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """UNet channels per resolution level (32, 16, 8 px at resolution 32)."""
    layers_per_block: int = 1
    """ResNet layers per UNet level (the up path uses one more, as diffusers does)."""
    attention_heads: int = 2
    """Heads per UNet attention layer; 2 wide heads run ~1.5x faster on CPU than 8 narrow ones (measured)."""
    text_hidden_size: int = 64
    """Width of the text encoder; also the UNet's cross_attention_dim."""
    text_layers: int = 2
    """Transformer layers in the text encoder."""
    max_length: int = 16
    """Tokens per prompt after padding (BOS + words + EOS); the longest toy prompt takes 10."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: the cosine schedule beats the linear one at 32-64 px (Nichol & Dhariwal 2021, Sec. 3.2)."""


def toy_words() -> list[str]:
    """Every pre-token the toy prompts can contain: the prompt words, ',', '-', 'view' and the view labels."""
    texts = list(PROMPTS) + [f"{p}, {label} view" for p in PROMPTS for label in VIEW_LABELS]
    words = set()
    for text in texts:
        for chunk in text.replace(",", " , ").replace("-", " - ").split():
            words.add(chunk)
    return sorted(words)


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` outside the toy vocabulary (`toy_words`, any case), in order, each once. The toy
    tokenizer spells them from letters or drops them, so the prior reads them as noise, not meaning."""
    known = set(toy_words())
    words = prompt.lower().replace(",", " , ").replace("-", " - ").split()
    return list(dict.fromkeys(w for w in words if w not in known))


def learn_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges that turn each of `words` into one token, and the vocabulary they need.

    Classic BPE training (Sennrich et al. 2016): repeatedly merge the most frequent adjacent pair, ties
    broken alphabetically so the result is deterministic, until every word is a single symbol. The last
    character of a word carries CLIP's end-of-word suffix. Because merges are applied at tokenisation in
    the order they were learned, each word comes back as exactly one token.
    """
    words_symbols = [[*w[:-1], w[-1] + END_OF_WORD] for w in words]
    alphabet = sorted({s for symbols in words_symbols for s in symbols} | {c for w in words for c in w})
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in words_symbols):
        pairs = Counter(p for s in words_symbols for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        for k, symbols in enumerate(words_symbols):
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words_symbols[k] = out
    tokens = [BOS, EOS] + alphabet + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is the toy world's words (each one token)."""
    vocab, merges = learn_bpe(toy_words())
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=max_length,
    )


def build(config: ToyModelConfig, seed: int = 0) -> ToyPriorParts:
    """A randomly initialised toy prior (seeded)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(config.max_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=4 * config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=max(1, config.text_hidden_size // 16),
            max_position_embeddings=config.max_length,
            projection_dim=config.text_hidden_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    levels = len(config.block_out_channels)
    # Full-resolution self-attention costs (32*32)^2 per head on CPU, so the top level is a plain ResNet
    # block; text enters through cross-attention at the lower levels, where colour and shape are decided.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.attention_heads,  # diffusers reads this as the number of heads (its naming)
        norm_num_groups=min(32, min(config.block_out_channels) // 4),
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,  # pixel space: x0 lives in [-1, 1] (Ho et al. 2020 clip at sampling)
    )
    return ToyPriorParts(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save(parts: ToyPriorParts, directory: str | Path) -> None:
    """Write the prior in the Stable Diffusion layout (safetensors), overwriting what is there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts.unet.save_pretrained(directory / "unet", safe_serialization=True)
    parts.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
    parts.tokenizer.save_pretrained(directory / "tokenizer")
    # transformers 5 writes only tokenizer.json; the slow CLIPTokenizer of transformers 4 reads these two.
    bpe = json.loads(parts.tokenizer.backend_tokenizer.to_str())["model"]
    (directory / "tokenizer" / "vocab.json").write_text(json.dumps(bpe["vocab"], indent=1) + "\n")
    merges = [" ".join(m) if isinstance(m, list) else m for m in bpe["merges"]]
    (directory / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    parts.scheduler.save_pretrained(directory / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "requires_safety_checker": False,
        "scheduler": ["diffusers", type(parts.scheduler).__name__],
        "text_encoder": ["transformers", type(parts.text_encoder).__name__],
        "tokenizer": ["transformers", type(parts.tokenizer).__name__],
        "unet": ["diffusers", type(parts.unet).__name__],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def load(directory: str | Path) -> ToyPriorParts:
    """Read a prior directory written by `save` (or any pixel-space SD-layout directory)."""
    from splatdreamer.prior import loading
    from splatdreamer.prior.diffusion import converting_load_errors

    # The checks `generate` makes: a local directory (or a hub id already cached) of the right layout, never a
    # download, and one PriorLoadError for damaged weights instead of a library's traceback.
    directory = loading.check(loading.resolve(directory)).directory
    with converting_load_errors(directory):
        return ToyPriorParts(
            unet=UNet2DConditionModel.from_pretrained(directory / "unet"),
            text_encoder=CLIPTextModel.from_pretrained(directory / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(directory / "tokenizer"),
            scheduler=DDPMScheduler.from_pretrained(directory / "scheduler"),
        )


def encode_prompts(parts: ToyPriorParts, prompts: list[str]) -> torch.Tensor:
    """[B] prompts -> [B, max_length, hidden] text embeddings, padded as Stable Diffusion pads."""
    tokens = parts.tokenizer(
        prompts, padding="max_length", max_length=parts.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    return parts.text_encoder(tokens.input_ids.to(parts.text_encoder.device))[0]
