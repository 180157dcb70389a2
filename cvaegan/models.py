"""The four CVAE-GAN networks (Encoder, Generator, Discriminator, Classifier) and the CVAEGAN container."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def channels(cfg: ModelConfig, res: int) -> int:
    """Channels used at spatial size `res`: base at full resolution, doubling per halving, capped."""
    return min(cfg.max_channels, cfg.base_channels * cfg.resolution // res)


def _levels(cfg: ModelConfig) -> list[int]:
    """Spatial sizes from full resolution down to 4: e.g. [64, 32, 16, 8, 4]."""
    return [cfg.resolution >> i for i in range(int(math.log2(cfg.resolution // 4)) + 1)]


def labels_to_onehot(c: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """c: (B,) int64 class indices, or (B, K) float class weights (rows summing to 1) -> (B, K) float."""
    if c.dtype in (torch.int64, torch.int32):
        assert c.dim() == 1, f"class indices must be (B,), got {tuple(c.shape)}"
        return F.one_hot(c.long(), num_classes).to(dtype)
    assert c.dim() == 2 and c.shape[1] == num_classes, f"class weights must be (B, {num_classes}), got {tuple(c.shape)}"
    return c.to(dtype)


class LabelEmbedding(nn.Module):
    """One-hot (or soft) label -> learned embedding; a soft label mixes class embeddings linearly."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return labels_to_onehot(c, self.num_classes, self.weight.dtype) @ self.weight


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    """Stride-2 4x4 conv halving the spatial size, then BN and LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ConvTrunk(nn.Module):
    """Shared down-sampling trunk for E, D and C: (B, 3, R, R) -> (B, C4 * 4 * 4)."""

    def __init__(self, cfg: ModelConfig, first_norm: bool = True):
        super().__init__()
        levels = _levels(cfg)
        blocks: list[nn.Module] = [
            nn.Conv2d(3, channels(cfg, cfg.resolution), 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for i, (r_in, r_out) in enumerate(zip(levels[:-1], levels[1:])):
            blocks.append(_down(channels(cfg, r_in), channels(cfg, r_out), norm=first_norm or i > 0))
        self.net = nn.Sequential(*blocks)
        self.out_dim = channels(cfg, 4) * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class Encoder(nn.Module):
    """E(x, c) -> (mu, logvar) of q(z | x, c). x: (B, 3, R, R) in [-1, 1]; c: (B,) or (B, K)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = ConvTrunk(cfg)
        self.embed = LabelEmbedding(cfg.num_classes, cfg.label_dim)
        self.head = nn.Sequential(
            nn.Linear(self.trunk.out_dim + cfg.label_dim, 512),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 2 * cfg.z_dim),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.trunk(x), self.embed(c).to(x.dtype)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class Generator(nn.Module):
    """G(z, c) -> x. z: (B, z_dim); c: (B,) indices or (B, K) weights; x: (B, 3, R, R) in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = LabelEmbedding(cfg.num_classes, cfg.label_dim)
        c4 = channels(cfg, 4)
        self.fc = nn.Linear(cfg.z_dim + cfg.label_dim, c4 * 16)
        self.bn0 = nn.BatchNorm2d(c4)
        levels = _levels(cfg)[::-1]  # 4, 8, ..., R
        blocks = []
        for r_in, r_out in zip(levels[:-1], levels[1:]):
            cin, cout = channels(cfg, r_in), channels(cfg, r_out)
            layers: list[nn.Module] = [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            ]
            if r_out <= 32:  # a second conv where it is cheap (low resolution)
                layers += [nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(channels(cfg, cfg.resolution), 3, 3, 1, 1)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(c).to(z.dtype)], dim=1))
        h = F.relu(self.bn0(h.view(z.shape[0], -1, 4, 4)))
        return torch.tanh(self.to_rgb(self.blocks(h)))


class Discriminator(nn.Module):
    """D(x) -> (logit (B,), feature f_D (B, feature_dim)). DCGAN-like: no BN on the first layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = ConvTrunk(cfg, first_norm=False)
        self.feature = nn.Sequential(nn.Linear(self.trunk.out_dim, cfg.feature_dim), nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(cfg.feature_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.feature(self.trunk(x))
        return self.out(f).squeeze(1), f


class Classifier(nn.Module):
    """C(x) -> (logits (B, K), feature f_C (B, feature_dim))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = ConvTrunk(cfg)
        self.feature = nn.Sequential(nn.Linear(self.trunk.out_dim, cfg.feature_dim), nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.feature(self.trunk(x))
        return self.out(f), f


NETWORKS = ("encoder", "generator", "classifier", "discriminator")


class CVAEGAN(nn.Module):
    """Container of E, G, C and (for training) D, plus the config they were built from.

    `from_pretrained` / `save_pretrained` live in cvaegan.hub and are attached here for convenience.
    """

    def __init__(self, cfg: ModelConfig, with_discriminator: bool = True):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.generator = Generator(cfg)
        self.classifier = Classifier(cfg)
        self.discriminator = Discriminator(cfg) if with_discriminator else None
        self.directions: torch.Tensor | None = None  # (num_directions, z_dim) unit vectors, if saved
        self.direction_scales: torch.Tensor | None = None  # amount unit per direction (z distance)
        self.source = ""  # where the weights were loaded from (set by the loader)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def networks(self) -> dict[str, nn.Module]:
        nets = {"encoder": self.encoder, "generator": self.generator, "classifier": self.classifier}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw) -> "CVAEGAN":
        from .hub import load_pretrained

        return load_pretrained(name_or_path, **kw)

    def save_pretrained(self, path: str, **kw) -> None:
        from .hub import save_pretrained

        save_pretrained(self, path, **kw)
