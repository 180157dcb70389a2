"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al., NeurIPS 2020) for small data sets.

Every random draw comes from an explicit torch.Generator so training stays reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> list[str]:
    """ "color,translation" -> ["color", "translation"]; "" -> []. Unknown names raise InputError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise InputError(f"unknown DiffAugment policy {bad}; choose from {list(POLICIES)}")
    return names


def _rand(gen: torch.Generator, *shape: int, device: torch.device) -> torch.Tensor:
    return torch.rand(*shape, generator=gen).to(device)


def diff_augment(x: torch.Tensor, policy: list[str], gen: torch.Generator) -> torch.Tensor:
    """x: (B, 3, H, W) in [-1, 1] -> augmented x, differentiable w.r.t. x."""
    b, _, h, w = x.shape
    dev = x.device
    if "color" in policy:
        x = x + (_rand(gen, b, 1, 1, 1, device=dev) - 0.5)  # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_rand(gen, b, 1, 1, 1, device=dev) * 2) + mean  # saturation
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - mean) * (_rand(gen, b, 1, 1, 1, device=dev) + 0.5) + mean  # contrast
    if "translation" in policy:  # shift by up to 1/8 of the size, zero padding
        sh, sw = h // 8, w // 8
        tx = (_rand(gen, b, device=dev) * (2 * sh + 1)).long() - sh
        ty = (_rand(gen, b, device=dev) * (2 * sw + 1)).long() - sw
        gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        gy = (gy.unsqueeze(0) + tx.view(b, 1, 1)).clamp(-1, h) + 1
        gx = (gx.unsqueeze(0) + ty.view(b, 1, 1)).clamp(-1, w) + 1
        padded = F.pad(x, [1, 1, 1, 1])
        bi = torch.arange(b, device=dev).view(b, 1, 1)
        x = padded.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)
    if "cutout" in policy:  # zero a random square of half the size
        ch, cw = h // 2, w // 2
        oy = (_rand(gen, b, device=dev) * (h + 1 - ch % 2)).long()
        ox = (_rand(gen, b, device=dev) * (w + 1 - cw % 2)).long()
        gy, gx = torch.meshgrid(torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij")
        gy = (gy.unsqueeze(0) + oy.view(b, 1, 1) - ch // 2).clamp(0, h - 1)
        gx = (gx.unsqueeze(0) + ox.view(b, 1, 1) - cw // 2).clamp(0, w - 1)
        mask = torch.ones(b, h, w, device=dev, dtype=x.dtype)
        mask[torch.arange(b, device=dev).view(b, 1, 1), gy, gx] = 0
        x = x * mask.unsqueeze(1)
    return x.contiguous()
