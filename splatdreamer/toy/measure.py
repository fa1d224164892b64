"""Image measures against the toy world's ground truth: silhouettes and colours on a white background."""

from __future__ import annotations

import torch
from torch import Tensor

FOREGROUND_THRESHOLD = 0.2  # a pixel is object when a channel differs from the background by more than this


def foreground(
    images: Tensor, background: Tensor | float = 1.0, threshold: float = FOREGROUND_THRESHOLD
) -> Tensor:
    """[B, 3, H, W] images in [0, 1], background [B, 3] or a grey level -> [B, H, W] bool mask of object pixels."""
    if isinstance(background, Tensor):
        background = background[:, :, None, None]
    return (images - background).abs().amax(dim=1) > threshold


def border_color(images: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 3] per-channel median of the one-pixel frame.

    Toy objects never reach the frame (at the closest default camera a radius-0.5 object spans 14 of 16
    pixels from the centre at 32 px), so this is the background a sample actually drew, which a
    diffusion model may tint away from pure white.
    """
    frame = torch.cat(
        [images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=-1
    )  # [B, 3, 2W + 2H - 4]
    return frame.median(dim=-1).values


def interior(mask: Tensor) -> Tensor:
    """[B, H, W] bool -> the mask less its one-pixel rim, where anti-aliasing blends object and background."""
    outside = (~mask).float()[:, None]
    return mask & (torch.nn.functional.max_pool2d(outside, 3, stride=1, padding=1)[:, 0] == 0)


def mean_foreground_color(images: Tensor, mask: Tensor) -> Tensor:
    """[B, 3, H, W] images, [B, H, W] masks -> [B, 3] mean colour of the masked pixels (NaN where none)."""
    weight = mask[:, None].float()
    return (images * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))


def nearest_color(colors: Tensor, palette: Tensor) -> tuple[Tensor, Tensor]:
    """[..., 3] colours, [K, 3] palette -> ([...] distance to the nearest entry, [...] its index)."""
    d = torch.linalg.vector_norm(colors[..., None, :] - palette, dim=-1)
    return d.min(dim=-1)


def pixel_color_error(images: Tensor, mask: Tensor, palette: Tensor) -> Tensor:
    """[B] mean over foreground pixels of the distance to the nearest palette colour (multi-coloured objects)."""
    d, _ = nearest_color(images.permute(0, 2, 3, 1), palette)  # [B, H, W]
    m = mask.float()
    return (d * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2))


def best_iou(masks: Tensor, references: Tensor) -> Tensor:
    """[B, H, W] masks, [M, H, W] reference silhouettes -> [B] IoU with the best-matching reference.

    A sampled image has no known camera, so it is compared with ground-truth renders from many views.
    """
    a = masks.flatten(1).float()
    b = references.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return (inter / union.clamp(min=1)).amax(dim=1)


def size_ratio(masks: Tensor, references: Tensor) -> Tensor:
    """[B, H, W] masks, [M, H, W] reference silhouettes -> [B] each mask's area over the references' mean area.

    Sampled images have unknown cameras, so a single one is not compared with a view; averaged over samples
    drawn from the same camera distribution as the references, the ratio says whether the prior draws the
    object too big (> 1) or too small (< 1), which IoU alone does not.
    """
    return masks.flatten(1).float().sum(1) / references.flatten(1).float().sum(1).mean().clamp(min=1)
