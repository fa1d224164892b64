"""The diffusion prior: Stable Diffusion (or the toy prior) for eps_pretrained, and phi (LoRA) for eps_phi."""

from splatdreamer.prior.diffusion import DiffusionPrior, TextEmbeddings

__all__ = ["DiffusionPrior", "TextEmbeddings"]
