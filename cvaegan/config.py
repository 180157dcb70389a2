"""Configuration dataclasses: ModelConfig (saved with the weights) and TrainConfig (saved per run)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Bump when the weights layout changes in a way older code cannot read.
FORMAT_VERSION = 1
RESOLUTIONS = (32, 64, 128)


class ConfigError(ValueError):
    """A config file or value that cannot be used (wrong type, unknown version, bad value)."""


def default_widths(resolution: int) -> dict[str, int]:
    """Default channel widths per resolution, sized for CPU inference (see README, Benchmarks)."""
    if resolution == 128:
        return {"base_channels": 16, "max_channels": 256}
    if resolution == 64:
        return {"base_channels": 32, "max_channels": 256}
    return {"base_channels": 64, "max_channels": 256}


@dataclass
class ModelConfig:
    """Architecture of the four networks. Saved as config.json next to the weights."""

    resolution: int = 64  # image side in pixels: 32, 64 or 128
    num_classes: int = 10  # K, number of fine-grained categories
    class_names: list[str] = field(default_factory=list)  # display name per class index (len K)
    class_folders: list[str] = field(default_factory=list)  # folder name per class index (len K)
    z_dim: int = 256  # latent attribute code size (paper: 256 (?))
    base_channels: int = 32  # channels at full resolution; doubles each halving of resolution
    max_channels: int = 256  # cap on channels at low resolutions
    label_dim: int = 128  # size of the learned class embedding fed to E and G
    feature_dim: int = 256  # size of f_D(x) and f_C(x) used by the feature-matching losses
    directions: list[str] = field(default_factory=list)  # names of saved latent directions (may be empty)
    direction_units: list[str] = field(default_factory=list)  # unit of each direction's amount
    format_version: int = FORMAT_VERSION  # weights layout version; newer than this code -> error
    package_version: str = ""  # cvaegan version that wrote the file (informational)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256, filled on save

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {self.num_classes}")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if not self.class_folders:
            self.class_folders = list(self.class_names)
        for name, values in (("class_names", self.class_names), ("class_folders", self.class_folders)):
            if len(values) != self.num_classes:
                raise ConfigError(f"{name} has {len(values)} entries but num_classes is {self.num_classes}")
        if self.z_dim < 1 or self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ConfigError("z_dim and base_channels must be positive and max_channels >= base_channels")
        if len(self.direction_units) < len(self.directions):
            self.direction_units = list(self.direction_units) + [""] * (len(self.directions) - len(self.direction_units))

    @classmethod
    def for_resolution(cls, resolution: int, num_classes: int, **kw: Any) -> "ModelConfig":
        """Config with the default widths for `resolution`; keyword arguments override."""
        args = {**default_widths(resolution), **kw}
        return cls(resolution=resolution, num_classes=num_classes, **args)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        """Build from a dict, rejecting configs from a newer format and unknown keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"{source}: weights format_version {version!r} is newer than this cvaegan understands "
                f"({FORMAT_VERSION}); upgrade cvaegan (pip install -U -r requirements.txt)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; was it written by a newer cvaegan?")
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from e

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a display name, folder name or index (int or digit string) to a class index."""
        if isinstance(name_or_index, bool):
            raise ConfigError(f"class must be a name or an index, got {name_or_index!r}")
        if isinstance(name_or_index, int):
            idx = name_or_index
        else:
            text = str(name_or_index).strip()
            for names in (self.class_names, self.class_folders):
                if text in names:
                    return names.index(text)
            lowered = [n.lower() for n in self.class_names]
            if text.lower() in lowered:
                return lowered.index(text.lower())
            if not text.lstrip("-").isdigit():
                shown = ", ".join(repr(n) for n in self.class_names[:20])
                more = f" ... ({self.num_classes} in all)" if self.num_classes > 20 else ""
                raise ConfigError(f"unknown class {text!r}; valid names: {shown}{more}, or an index 0-{self.num_classes - 1}")
            idx = int(text)
        if not 0 <= idx < self.num_classes:
            raise ConfigError(f"class index {idx} is out of range; valid indices are 0-{self.num_classes - 1}")
        return idx


VARIANTS = ("cvae-gan", "cvae", "cgan", "fm-cgan")


@dataclass
class TrainConfig:
    """Options of one training run. Saved as train_config.json in the run folder."""

    steps: int = 20000  # number of iterations (one C, D, G, E update each)
    batch_size: int = 64  # images per iteration
    lr: float = 2e-4  # Adam learning rate for all four networks (paper: unknown (?))
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (paper: unknown (?); DCGAN's choice)
    lambda1: float = 3.0  # weight of L_KL in E's loss (paper: 3)
    lambda2: float = 1.0  # weight of L_G in G's and E's losses (paper: 1)
    lambda3: float = 1e-3  # weight of L_GD, mean feature matching against D (paper: 1e-3)
    lambda4: float = 1e-3  # weight of L_GC, per-class mean feature matching against C (paper: 1e-3)
    momentum: float = 0.9  # running-mean momentum for L_GD / L_GC feature means; 0 = batch means only
    seed: int = 0  # seeds data order, flips and noise; every step's randomness derives from (seed, step)
    val_fraction: float = 0.0  # fraction of each class held out (deterministic); 0 = train on all
    log_every: int = 50  # append scalars to metrics.jsonl every N steps
    sample_every: int = 1000  # write a fixed (z, c) sample grid PNG every N steps; 0 = off
    checkpoint_every: int = 1000  # write the resume checkpoint every N steps
    sample_classes: int = 8  # rows of the sample grid (classes spread over the range)
    sample_seeds: int = 8  # columns of the sample grid (seeds 0..N-1)
    diffaugment: str = ""  # DiffAugment policy for D's inputs, e.g. "color,translation,cutout"; "" = off
    ema_decay: float | None = None  # EMA of G's weights used for export and samples, e.g. 0.999; None = off
    grad_clip: float | None = None  # max global grad norm per network and phase; None = off
    lr_schedule: str = "constant"  # "constant" or "cosine" (decays to 10% of lr over `steps`)
    warmup_steps: int = 0  # linear learning-rate warm-up steps; 0 = off
    device: str = "auto"  # "auto" (cuda if present), "cpu" or "cuda"
    export_fp16: bool = True  # store exported E, G, C weights as float16 (halves file size)
    export_discriminator: bool = False  # also export D (only needed to fine-tune later)
    # Ablations of the paper's Table 1: "cvae-gan" (the full model), "cvae" (E + G, KL + pixel L2 only),
    # "cgan" (G + class-conditional D, generator loss -log D(G(z, c))), "fm-cgan" (the same D, generator
    # loss = mean feature matching on D's features). The GAN variants condition D by projection
    # (Miyato & Koyama 2018): logit + <embed(c), f_D(x)>.
    variant: str = "cvae-gan"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON round trips give lists
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise ConfigError("steps must be >= 1 and batch_size >= 2")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
