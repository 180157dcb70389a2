"""The four CVAE-GAN networks (Encoder, Generator, Discriminator, Classifier) and the CVAEGAN container."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .config import ModelConfig
from .serialization import (
    PretrainedMixin,
    WeightsError,
    float16_state,
    load_state_strict,
    load_tensors,
    save_tensors,
    unwrap_state,
    verify_files,
)

DIRECTIONS_NAME = "directions.safetensors"
GUESSER_NAME = "guesser.safetensors"  # the optional class guesser of inpainting (cvaegan.guesser)


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


class ClassBatchNorm(nn.Module):
    """BatchNorm whose gain and bias are linear in the class embedding e (conditional BN).

    Both maps start at zero, so a fresh layer is a plain BatchNorm with unit gain and zero bias.
    """

    def __init__(self, ch: int, label_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = nn.Linear(label_dim, ch)
        self.bias = nn.Linear(label_dim, ch)
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """offset: optional (B, 2 * ch) added to the gain (first half) and the bias (second half): the per-class
        terms of enrolled classes (Generator.class_offsets)."""
        gain, bias = 1.0 + self.gain(e), self.bias(e)
        if offset is not None:
            gain, bias = gain + offset[:, : gain.shape[1]], bias + offset[:, gain.shape[1] :]
        return self.bn(h) * gain.to(h.dtype)[:, :, None, None] + bias.to(h.dtype)[:, :, None, None]


def _norm_layer(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    raise ValueError(f"unknown normalisation {kind!r}")


def _down(cin: int, cout: int, norm: str = "batch", sn: bool = False) -> nn.Sequential:
    """Stride-2 4x4 conv halving the spatial size, then the normalisation ("none": no layer) and LeakyReLU(0.2)."""
    conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=norm == "none")
    layers: list[nn.Module] = [nn.utils.parametrizations.spectral_norm(conv) if sn else conv]
    if norm != "none":
        layers.append(_norm_layer(norm, cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _linear(cin: int, cout: int, sn: bool = False) -> nn.Module:
    layer = nn.Linear(cin, cout)
    return nn.utils.parametrizations.spectral_norm(layer) if sn else layer


class ConvTrunk(nn.Module):
    """Shared down-sampling trunk for E, D and C: (B, 3, R, R) -> (B, C4 * 4 * 4).

    norm: "batch" (paper), "group" or "none" after every strided conv (never after the first one when
    first_norm is False, as in DCGAN's D); sn: spectral normalisation of every conv.
    """

    def __init__(self, cfg: ModelConfig, first_norm: bool = True, norm: str = "batch", sn: bool = False):
        super().__init__()
        levels = _levels(cfg)
        stem = nn.Conv2d(3, channels(cfg, cfg.resolution), 3, 1, 1)
        blocks: list[nn.Module] = [
            nn.utils.parametrizations.spectral_norm(stem) if sn else stem,
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for i, (r_in, r_out) in enumerate(zip(levels[:-1], levels[1:])):
            blocks.append(
                _down(channels(cfg, r_in), channels(cfg, r_out), norm=norm if (first_norm or i > 0) else "none", sn=sn)
            )
        self.net = nn.Sequential(*blocks)
        self.out_dim = channels(cfg, 4) * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)

    def forward_maps(self, x: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Like forward, and also the activation maps whose spatial size is in `sizes` (after each block)."""
        maps: dict[int, torch.Tensor] = {}
        for block in self.net:
            x = block(x)
            if x.shape[-1] in sizes and isinstance(block, nn.Sequential):
                maps[x.shape[-1]] = x
        return x.flatten(1), maps


class SelfSupDecoder(nn.Module):
    """FastGAN-style decoder of D (Liu et al. 2021): an 8x8 map -> a 32x32 image, two nearest x2 upsamplings,
    each followed by a 3x3 conv, BatchNorm and LeakyReLU, then a 3x3 conv to RGB and tanh. Kept narrow: it only
    has to make D's features keep what a photo looks like, not draw well."""

    def __init__(self, cin: int, mid: int):
        super().__init__()
        out = max(8, mid // 2)
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, mid, 3, 1, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(mid, out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out, 3, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def quarter_crop(t: torch.Tensor, quarter: int) -> torch.Tensor:
    """The `quarter` (0-3: top-left, top-right, bottom-left, bottom-right) of square maps or images (..., S, S)."""
    half = t.shape[-1] // 2
    top, left = (quarter // 2) * half, (quarter % 2) * half
    return t[..., top : top + half, left : left + half]


def selfsup_targets(x: torch.Tensor, quarter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What D's decoders must rebuild from images x (B, 3, R, R): the whole image and its `quarter`
    (see quarter_crop), both resized to 32x32."""
    return _resize32(x), _resize32(quarter_crop(x, quarter))


def _resize32(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 32:
        return x
    if x.shape[-1] > 32:
        return F.interpolate(x, size=(32, 32), mode="area")
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)


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
    """G(z, c) -> x. z: (B, z_dim); c: (B,) indices or (B, K) weights; x: (B, 3, R, R) in [-1, 1].

    The class embedding joins z at the input; with cfg.g_cond == "cbn" it also sets the gain and bias
    of every BatchNorm (ClassBatchNorm), so the class reaches every layer, not only the first.

    class_offsets (cbn only): None, or a (num_classes, offset_size()) table of per-class terms added to every
    ClassBatchNorm's gain and bias, in module order; zero rows for trained classes. Enrolment learns a row for a
    class it adds (cvaegan.enrol); it is not part of the state dict, so released weights never carry it.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = LabelEmbedding(cfg.num_classes, cfg.label_dim)
        c4 = channels(cfg, 4)
        self.fc = nn.Linear(cfg.z_dim + cfg.label_dim, c4 * 16)

        def bn(ch: int) -> nn.Module:
            return ClassBatchNorm(ch, cfg.label_dim) if cfg.g_cond == "cbn" else nn.BatchNorm2d(ch)

        self.bn0 = bn(c4)
        levels = _levels(cfg)[::-1]  # 4, 8, ..., R
        blocks = []
        for r_in, r_out in zip(levels[:-1], levels[1:]):
            cin, cout = channels(cfg, r_in), channels(cfg, r_out)
            layers: list[nn.Module] = [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                bn(cout),
                nn.ReLU(inplace=True),
            ]
            if r_out <= 32:  # a second conv where it is cheap (low resolution)
                layers += [nn.Conv2d(cout, cout, 3, 1, 1, bias=False), bn(cout), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(channels(cfg, cfg.resolution), 3, 3, 1, 1)
        self.register_buffer("class_offsets", None, persistent=False)

    def offset_sizes(self) -> list[int]:
        """Length of each ClassBatchNorm's slice of a class_offsets row (2 x its channels), in module order."""
        return [2 * m.bn.num_features for m in self.modules() if isinstance(m, ClassBatchNorm)]

    def offset_size(self) -> int:
        """Length of a class_offsets row; 0 when G has no class-conditional BatchNorm."""
        return sum(self.offset_sizes())

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        e = self.embed(c).to(z.dtype)
        offsets = iter(())
        if self.class_offsets is not None:
            table = self.class_offsets
            rows = labels_to_onehot(c, table.shape[0], table.dtype) @ table  # soft labels mix the rows
            offsets = iter(torch.split(rows, self.offset_sizes(), dim=1))

        def run(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:  # a ClassBatchNorm also takes the class
            return layer(h, e, next(offsets, None)) if isinstance(layer, ClassBatchNorm) else layer(h)

        h = F.relu(run(self.bn0, self.fc(torch.cat([z, e], dim=1)).view(z.shape[0], -1, 4, 4)))
        for block in self.blocks:
            for layer in block:
                h = run(layer, h)
        return torch.tanh(self.to_rgb(h))


def generator_state_to_cbn(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A concat G's state dict (cfg.g_cond "concat") rewritten for the same G with class-conditional BatchNorm:
    each BN's affine weight w and bias b become the class maps' constant terms (gain bias w - 1, bias bias b,
    both matrices zero), its running statistics move to the inner BN. The converted G computes exactly what
    the concat G did, so a released model can warm-start with --g-cond cbn."""
    target = Generator(dataclasses.replace(cfg, g_cond="cbn"))
    out: dict[str, torch.Tensor] = {}
    cbn = {name for name, m in target.named_modules() if isinstance(m, ClassBatchNorm)}
    for key, ref in target.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        owner = prefix.rpartition(".")[0] if prefix.endswith((".bn", ".gain", ".bias")) else None
        if owner not in cbn:
            out[key] = state[key]
        elif prefix.endswith(".bn"):  # running_mean / running_var / num_batches_tracked
            out[key] = state[f"{owner}.{leaf}"]
        elif leaf == "weight":  # the class matrices start at zero: no class dependence yet
            out[key] = torch.zeros_like(ref)
        elif prefix.endswith(".gain"):
            out[key] = state[f"{owner}.weight"].to(ref.dtype) - 1.0
        else:
            out[key] = state[f"{owner}.bias"].to(ref.dtype)
    return out


class Discriminator(nn.Module):
    """D(x) -> (logit (B,), feature f_D (B, feature_dim)). DCGAN-like: no BN on the first layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sn = cfg.spectral_norm
        self.trunk = ConvTrunk(cfg, first_norm=False, norm=cfg.d_norm, sn=sn)
        self.feature = nn.Sequential(_linear(self.trunk.out_dim, cfg.feature_dim, sn), nn.LeakyReLU(0.2, inplace=True))
        self.out = _linear(cfg.feature_dim, 1, sn)
        if cfg.d_selfsup:  # FastGAN's self-supervision: only in training, on real photos (cvaegan.losses)
            self.decode_whole = SelfSupDecoder(channels(cfg, 8), channels(cfg, 32))
            self.decode_part = SelfSupDecoder(channels(cfg, 16), channels(cfg, 32))

    def forward(
        self, x: torch.Tensor, decode: int = 0, quarter: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """decode > 0 (with cfg.d_selfsup): also rebuild the first `decode` images of x, whole and their
        `quarter` (see selfsup_targets), from D's 8x8 and 16x16 maps. A keyword of forward, not a method of
        its own, so that it works through a data-parallel wrapper."""
        if not decode:
            f = self.feature(self.trunk(x))
            return self.out(f).squeeze(1), f
        if not hasattr(self, "decode_whole"):
            raise ValueError("this discriminator has no self-supervision decoders (ModelConfig.d_selfsup is off)")
        flat, maps = self.trunk.forward_maps(x, (16, 8))
        f = self.feature(flat)
        whole = self.decode_whole(maps[8][:decode])
        part = self.decode_part(quarter_crop(maps[16][:decode], quarter))
        return self.out(f).squeeze(1), f, whole, part


class Classifier(nn.Module):
    """C(x) -> (logits (B, K), feature f_C (B, feature_dim))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = ConvTrunk(cfg, norm=cfg.c_norm)
        self.feature = nn.Sequential(nn.Linear(self.trunk.out_dim, cfg.feature_dim), nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.feature(self.trunk(x))
        return self.out(f), f


NETWORKS = ("encoder", "generator", "classifier", "discriminator")


def build_guesser(cfg: ModelConfig) -> nn.Module:
    """The class guesser that cfg.guesser describes (a judge-type network with one output per class of the model),
    untrained; eval mode."""
    from .judge import Judge, JudgeConfig

    g = cfg.guesser
    try:
        jcfg = JudgeConfig(
            resolution=cfg.resolution,
            num_classes=int(g.get("num_classes", cfg.num_classes)),
            widths=[int(w) for w in g["widths"]],
            stem_stride=int(g.get("stem_stride", 2)),
        )
        if not 0 <= float(g.get("weight", 1.0)) <= 1:
            raise ValueError(f"weight {g['weight']!r} is not between 0 and 1")
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"config.json's guesser entry is broken ({e!r}); run `cvaegan fit-guesser` again") from e
    return Judge(jcfg).eval()


class CVAEGAN(PretrainedMixin, nn.Module):
    """Container of E, G, C and (for training) D, plus the config they were built from.

    Saved as config.json + encoder/generator/classifier[/discriminator].safetensors (+ the latent
    directions); `from_pretrained` loads a folder or a Hub repo (see PretrainedMixin).
    """

    config_class = ModelConfig
    config_missing = "a weights folder needs config.json + *.safetensors (see `cvaegan export`)"

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
        # class index -> (mean, std) of z: the photo prior of a class enrolled from photos (cvaegan.enrol); the
        # trained classes have none and always sample z ~ N(0, I). Not saved with the weights.
        self.class_priors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # a small classifier trained on photos with holes (`cvaegan fit-guesser`): when present, it rather than C
        # names the class of a photo to inpaint in "auto" mode (inference.guess_probabilities); None: C does.
        self.guesser: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def networks(self) -> dict[str, nn.Module]:
        nets = {"encoder": self.encoder, "generator": self.generator, "classifier": self.classifier}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    def weight_files(self) -> dict[str, nn.Module]:
        return {f"{name}.safetensors": net for name, net in self.networks().items()}

    def save_pretrained(
        self,
        path: str | os.PathLike,
        fp16: bool = True,
        include_discriminator: bool = False,
        extra: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> Path:
        """Write config.json + encoder/generator/classifier[/discriminator].safetensors (+ directions, + the
        `extra` files: file name -> tensors, saved as given). fp16 stores the networks' float tensors as
        float16 (loading casts back to float32)."""
        if self.generator.class_offsets is not None and self.generator.class_offsets.any():
            raise WeightsError(
                "cannot save these weights: they hold classes enrolled with their own terms in G's class BatchNorms, "
                "which a weights folder cannot carry; save those classes with cvaegan.enrol.save_classes and load "
                "them beside the weights (load_pretrained(..., extra_classes=[...]))"
            )
        names = ["encoder", "generator", "classifier"] + (["discriminator"] if include_discriminator else [])
        names += ["guesser"] if self.guesser is not None else []
        tensors, metadata = {}, {}
        for name in names:
            net = getattr(self, name)
            if net is None:
                raise WeightsError(f"cannot save {name}: this model has none (load it with with_discriminator=True)")
            tensors[f"{name}.safetensors"] = float16_state(net) if fp16 else unwrap_state(net)
            metadata[f"{name}.safetensors"] = {"format": "pt", "network": name, "cvaegan": __version__}
        for fname, t in (extra or {}).items():
            tensors[fname] = t
            metadata[fname] = {"format": "pt", "cvaegan": __version__}
        if self.directions is not None:
            tensors[DIRECTIONS_NAME] = self._direction_tensors()
        # the guesser entry describes a guesser file: none without the network (e.g. a run warm-started from weights)
        guesser = self.config.guesser if self.guesser is not None else {}
        return self.write_folder(path, tensors, metadata, package_version=__version__, guesser=guesser)

    def save_directions(self, path: str | os.PathLike) -> None:
        """Add (or replace) the latent directions of an existing weights folder; network files stay as they are."""
        out = Path(path)
        if self.directions is None:
            raise WeightsError("the model has no directions to save; compute them first")
        files = {k: v for k, v in self.read_config(out).files.items() if k != DIRECTIONS_NAME}
        files[DIRECTIONS_NAME] = save_tensors(self._direction_tensors(), out / DIRECTIONS_NAME)
        self.write_config(out, files, package_version=__version__)

    def _direction_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "directions": self.directions.float().cpu().contiguous(),
            "scales": self.direction_scales.float().cpu().contiguous(),
        }

    def load_extras(self, folder: Path) -> None:
        if self.config.guesser:
            self.guesser = build_guesser(self.config)
            if GUESSER_NAME not in self.config.files:
                raise WeightsError(
                    f"{folder}: config.json describes a class guesser but lists no {GUESSER_NAME}; re-download the "
                    "weights, or run `cvaegan fit-guesser` on them again"
                )
            load_state_strict(self.guesser, load_tensors(folder / GUESSER_NAME), str(folder / GUESSER_NAME))
        if not self.config.directions:
            return
        path = folder / DIRECTIONS_NAME
        t = load_tensors(path)
        d, s, n = t.get("directions"), t.get("scales"), len(self.config.directions)
        if d is None or s is None or d.shape != (n, self.config.z_dim) or s.shape != (n,):
            raise WeightsError(
                f"{path}: expected 'directions' ({n}, {self.config.z_dim}) and 'scales' ({n},) to match config.json"
            )
        self.directions, self.direction_scales = d.float(), s.float()

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        verify: bool = True,
        with_discriminator: bool = False,
    ) -> CVAEGAN:
        """Load a local weights folder strictly; networks in eval mode, float32, on `device`.
        (Enrolled classes: cvaegan.hub.load_pretrained(..., extra_classes=...).)"""
        if with_discriminator and not (Path(folder) / "discriminator.safetensors").is_file():
            raise WeightsError(
                f"{folder}: no discriminator.safetensors; export with --export-discriminator to fine-tune"
            )
        return super().from_folder(folder, device, verify, with_discriminator=with_discriminator)

    def load_discriminator(self, folder: str | os.PathLike | None = None) -> Discriminator | None:
        """D from `folder` (default: the folder these weights were loaded from), checked against its config.json
        entry and loaded strictly, in eval mode on this model's device; None when the folder has no
        discriminator.safetensors. The model itself is left as it is: served models load without D, and
        enrolment borrows it (`enrol(..., discriminator=...)`) for D's features."""
        if folder is None and not self.source:  # built in memory: no folder to look in (not the working directory)
            return None
        folder = Path(folder if folder is not None else self.source)
        path = folder / "discriminator.safetensors"
        if not path.is_file():
            return None
        verify_files(folder, {path.name: self.read_config(folder).files.get(path.name, "")}, self.config_broken)
        net = Discriminator(self.config)  # a D of other weights fails the strict load, with its file named
        load_state_strict(net, load_tensors(path), str(path))
        return net.to(self.device).eval()
