"""Finding and checking a Stable Diffusion directory before any weights are read.

Everything a user can get wrong here (a typo in a path, a half-downloaded model, a hub id that was
never downloaded, an SDXL or inpainting model) becomes one `PriorLoadError` that names the problem and
the ways out. splatdreamer never downloads weights: hub ids are looked up in the local cache only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from splatdreamer.errors import PriorLoadError

WAYS_OUT = (
    "Ways out: pass a local diffusers Stable Diffusion 1.x/2.x directory (--prior.name /path/to/model); "
    "or pre-populate the Hugging Face cache on a machine with network access "
    "(huggingface-cli download <owner>/<model>, then copy ~/.cache/huggingface/hub) and pass the hub id; "
    "or use --prior.name toy, the embedded toy prior, which runs anywhere."
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repository ids
# Weight-file stems per component (diffusers models, transformers models); each may be plain, sharded
# (with an index) or a variant such as diffusion_pytorch_model.fp16.safetensors.
WEIGHT_STEMS = {
    "unet": ("diffusion_pytorch_model",),
    "vae": ("diffusion_pytorch_model",),
    "text_encoder": ("model", "pytorch_model"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


@dataclass(frozen=True)
class Layout:
    """What a checked Stable Diffusion directory holds."""

    directory: Path
    has_vae: bool  # False: a pixel-space prior (the UNet denoises images in [-1, 1])
    variant: str | None  # weight-file variant to load ("fp16" when only *.fp16.* files are present)


def resolve(name: str | Path) -> Path:
    """A local directory as it is; an `owner/name` hub id through the offline Hugging Face cache only."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PriorLoadError(f"the prior {str(name)!r} is a file, not a diffusers model directory. {WAYS_OUT}")
        return path
    if not HUB_ID.match(str(name)):
        raise PriorLoadError(f"the prior directory {str(name)!r} does not exist. {WAYS_OUT}")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise PriorLoadError(
            f"the prior {str(name)!r} is not a local directory, and as a hub id it is not in the offline "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}); splatdreamer never downloads weights. {WAYS_OUT}"
        ) from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PriorLoadError(f"cannot read {path}: {e}. {WAYS_OUT}") from None
    if not isinstance(data, dict):
        raise PriorLoadError(f"{path} holds a JSON {type(data).__name__}, not an object: it is damaged. {WAYS_OUT}")
    return data


def _names_component(index: dict, key: str) -> bool:
    """Whether model_index.json names a `key` component: diffusers writes [library, class], and [null, null] or
    no entry when there is none."""
    entry = index.get(key)
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def _weights_variant(folder: Path) -> str | None:
    """None if plain weight files are present, else the variant of the variant-only files (e.g. "fp16")."""
    stems = WEIGHT_STEMS[folder.name]
    names = [p.name for p in folder.iterdir()]
    if any(n == stem + suffix for stem in stems for suffix in WEIGHT_SUFFIXES for n in names):
        return None
    for n in names:  # e.g. diffusion_pytorch_model.fp16.safetensors
        for stem in stems:
            found = re.fullmatch(re.escape(stem) + r"\.(\w+)\.(safetensors|bin)", n)
            if found:
                return found.group(1)
    raise PriorLoadError(
        f"{folder.parent} is not a complete diffusers Stable Diffusion directory: {folder.name}/ has no weights "
        f"({stems[0]}.safetensors or .bin). {WAYS_OUT}"
    )


def check(directory: Path, phi_base: bool = False) -> Layout:
    """Raise `PriorLoadError` unless `directory` holds a loadable SD 1.x/2.x model; say what it holds.

    phi_base: only the UNet and the scheduler are read (a separate base model for phi shares the pretrained
    model's text encoder and VAE); whether it fits the pretrained model is checked by the prior.
    """
    parts = ("unet", "scheduler") if phi_base else ("unet", "text_encoder", "tokenizer", "scheduler")

    def missing(what: str) -> PriorLoadError:
        return PriorLoadError(
            f"{directory} is not a diffusers Stable Diffusion directory: {what} is missing. {WAYS_OUT}"
        )

    def unsupported(why: str) -> PriorLoadError:
        return PriorLoadError(f"{directory} ({pipeline}) is an unsupported model kind: {why}. {WAYS_OUT}")

    if not (directory / "model_index.json").is_file():
        raise missing("model_index.json")
    index = _read_json(directory / "model_index.json")
    pipeline = index.get("_class_name", "unknown pipeline")
    # Components of other families (SDXL's second text encoder, DiT transformers, Kandinsky-style priors);
    # diffusers writes absent optional components as [null, null], which SD 1.x/2.x directories have.
    if any(_names_component(index, key) for key in ("text_encoder_2", "transformer", "prior")):
        raise unsupported("splatdreamer needs a Stable Diffusion 1.x/2.x model (one UNet, one CLIP text encoder)")

    required = {"unet": "config.json", "text_encoder": "config.json", "scheduler": "scheduler_config.json"}
    for part in parts:
        if not (directory / part).is_dir():
            raise missing(f"{part}/")
        if part in required and not (directory / part / required[part]).is_file():
            raise missing(f"{part}/{required[part]}")
    tok = directory / "tokenizer"
    has_bpe_files = (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
    if "tokenizer" in parts and not has_bpe_files and not (tok / "tokenizer.json").is_file():
        raise missing("tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)")
    has_vae = not phi_base and (directory / "vae").is_dir()
    if has_vae and not (directory / "vae" / "config.json").is_file():
        raise missing("vae/config.json")
    if not phi_base and not has_vae and _names_component(index, "vae"):
        raise missing("vae/ (model_index.json names one)")

    unet = _read_json(directory / "unet" / "config.json")
    in_channels = unet.get("in_channels", 4)
    if unet.get("_class_name") != "UNet2DConditionModel":
        raise unsupported(f"its unet/ is a {unet.get('_class_name')}, not a UNet2DConditionModel")
    if unet.get("addition_embed_type") is not None:
        raise unsupported(f"its UNet takes extra conditioning ({unet['addition_embed_type']!r}, as SDXL's)")
    if unet.get("class_embed_type") is not None or unet.get("num_class_embeds") is not None:
        raise unsupported("its UNet is class-conditioned (the class embedding is where phi's camera goes)")
    if has_vae:
        latent = _read_json(directory / "vae" / "config.json").get("latent_channels", 4)
        if in_channels != latent:
            raise unsupported(
                f"its UNet takes {in_channels} input channels but the VAE makes {latent} "
                "(inpainting/upscaling/depth models need extra image inputs)"
            )
    elif not phi_base and in_channels != 3:
        raise unsupported(
            f"it has no vae/, so it would be a pixel-space prior, but its UNet takes {in_channels} channels "
            "instead of 3 (a latent model without its VAE)"
        )

    weighted = [p for p in parts if p in WEIGHT_STEMS] + (["vae"] if has_vae else [])
    variants = {_weights_variant(directory / p) for p in weighted}
    if len(variants) > 1:
        raise PriorLoadError(
            f"{directory} mixes weight variants ({', '.join(sorted(str(v) for v in variants))}) across its "
            f"components; keep one set of files. {WAYS_OUT}"
        )
    return Layout(directory=directory, has_vae=has_vae, variant=variants.pop())
