"""Encoded prompts: the plain prompt, the negative prompt and the view-dependent variants."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def view_prompt(prompt: str, label: str) -> str:
    """ProlificDreamer's view-dependent prompt form (official nerf/utils.py:564-582): "a red ball, front view"."""
    return f"{prompt}, {label} view"


@dataclass(frozen=True)
class TextEmbeddings:
    """Text-encoder states of one (prompt, negative prompt) pair; every tensor is [1, L, D].

    cond: the plain prompt; phi's text condition (official nerf/utils.py:418-433 uses the view-independent text).
    uncond: the negative prompt ("" by default); the unconditional branch of classifier-free guidance.
    view: `view_prompt(prompt, label)` per view label; the pretrained branch's condition (official --dir_text).
    """

    cond: Tensor  # [1, L, D]
    uncond: Tensor  # [1, L, D]
    view: dict[str, Tensor]  # label -> [1, L, D]

    def plain(self, batch: int) -> Tensor:
        """[B, L, D] the plain prompt for each of `batch` samples."""
        return self.cond.expand(batch, -1, -1)

    def negative(self, batch: int) -> Tensor:
        """[B, L, D] the negative prompt for each of `batch` samples."""
        return self.uncond.expand(batch, -1, -1)

    def for_views(self, labels: list[str]) -> Tensor:
        """[B, L, D] the view-dependent prompt of each sample's camera (labels from `Cameras.view_labels()`)."""
        unknown = sorted(set(labels) - set(self.view))
        assert not unknown, f"no view-dependent prompt for {unknown}; known: {sorted(self.view)}"
        return torch.cat([self.view[label] for label in labels])
