"""The diffusion prior: Stable Diffusion (or the toy prior) for eps_pretrained, and phi (LoRA) for eps_phi."""

from splatdreamer.prior.diffusion import DiffusionPrior, to_epsilon
from splatdreamer.prior.text import TextEmbeddings, view_prompt

__all__ = ["DiffusionPrior", "TextEmbeddings", "to_epsilon", "view_prompt"]
