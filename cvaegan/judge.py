"""An independent judge: a classifier trained on real images only, used to score generated images.

The paper (Sec. 5) measures generators with a classifier trained on the target data rather than an
ImageNet Inception network; we do the same, fully offline. The judge deliberately differs from the
model's C: residual blocks with GroupNorm and SiLU (C: a plain strided conv trunk with BatchNorm and
LeakyReLU), trained with its own seed, with input augmentation and label smoothing. It never sees a
generated image. Saved as judge/config.json + judge.safetensors, loaded strictly.

An *attribute judge* (`cvaegan judge --attributes`) is the same network trained to regress the
metadata's continuous `attr_*` columns (head yaw and pitch, mouth opening, smile, eye opening,
brightness, lighting) instead of the class; it re-measures those attributes on generated images to
check the app's named latent sliders. Its augmentation is translation only: flips would negate yaw and
lighting direction, colour jitter would change brightness.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import SPLIT_SEED, LabelledImages, split_indices
from .errors import InputError
from .images import fill_smooth, uint8_to_float
from .serialization import PretrainedMixin, WeightsError, unwrap_state

JUDGE_KIND = "cvaegan-judge"
JUDGE_FORMAT = 1
JUDGE_FILE = "judge.safetensors"


class JudgeError(InputError):
    """A judge cannot be trained or used as asked; the message says why and what to do."""


@dataclass
class JudgeConfig:
    resolution: int = 64
    num_classes: int = 2
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    stem_stride: int = 2  # 2 halves the input at once (cheap); 1 keeps full resolution in the first block
    class_names: list[str] = field(default_factory=list)
    class_folders: list[str] = field(default_factory=list)
    kind: str = JUDGE_KIND
    format_version: int = JUDGE_FORMAT
    training: dict = field(default_factory=dict)  # epochs, seed, split, val top-1, wall time
    files: dict = field(default_factory=dict)  # file name -> sha256
    targets: list[str] = field(default_factory=list)  # attribute judge: the attr_* columns it regresses
    target_mean: list[float] = field(default_factory=list)  # training-split mean / std of each target
    target_std: list[float] = field(default_factory=list)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    @property
    def outputs(self) -> int:
        return len(self.targets) if self.targets else self.num_classes

    @classmethod
    def from_dict(cls, data: dict, source: str) -> JudgeConfig:
        if not isinstance(data, dict) or data.get("kind") != JUDGE_KIND:
            raise WeightsError(
                f"{source}: not a judge config (kind {data.get('kind') if isinstance(data, dict) else None!r}); "
                "make one with `cvaegan judge --data ... --out DIR`"
            )
        if not isinstance(data.get("format_version"), int) or data["format_version"] > JUDGE_FORMAT:
            raise WeightsError(
                f"{source}: judge format {data.get('format_version')!r} is newer than this cvaegan "
                f"understands ({JUDGE_FORMAT}); upgrade cvaegan"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(f"{source}: unknown judge config keys {unknown}")
        return cls(**data)


class _Block(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU); stride 2 halves the size."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.n1 = nn.GroupNorm(min(8, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n2 = nn.GroupNorm(min(8, cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class Judge(PretrainedMixin, nn.Module):
    """x: (B, 3, R, R) in [-1, 1] -> (logits (B, K), features (B, widths[-1])).
    Saved as config.json + judge.safetensors."""

    config_class = JudgeConfig
    config_missing = "make a judge with `cvaegan judge --data ... --out {folder}`"
    config_broken = "re-create the judge"

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.config = cfg
        w = cfg.widths
        self.stem = nn.Conv2d(3, w[0], 3, cfg.stem_stride, 1)
        blocks, cin = [], w[0]
        for i, cout in enumerate(w):
            blocks.append(_Block(cin, cout, 1 if i == 0 else 2))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(min(8, cin), cin)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(cin, cfg.outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.resolution or x.shape[-2] != self.config.resolution:
            x = F.interpolate(
                x, size=(self.config.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        h = F.silu(self.norm(self.blocks(self.stem(x))))
        return h.mean((2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.fc(self.drop(f)), f

    def weight_files(self) -> dict[str, nn.Module]:
        return {JUDGE_FILE: self}


def shift_batch(x: torch.Tensor, gen: torch.Generator, fraction: int = 16) -> torch.Tensor:
    """Random translations of up to 1/fraction of the side (reflect padding); with the default 1/16,
    the attribute judge's only augmentation."""
    b, _, h, w = x.shape
    p = max(1, h // fraction)
    padded = F.pad(x, [p, p, p, p], mode="reflect")
    oy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    return torch.stack([padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(b)])


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Judge training augmentation on (B, 3, R, R) in [-1, 1]: horizontal flips, translations of up
    to 1/8 of the side (reflect padding), brightness / contrast / saturation jitter of +-20%."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = shift_batch(torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x), gen, fraction=8)
    j = lambda: 1 + 0.4 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)  # noqa: E731
    x = x * j()  # brightness (around mid-grey 0)
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * j() + m  # contrast
    g = x.mean(1, keepdim=True)
    x = (x - g) * j() + g  # saturation
    return x.clamp(-1, 1)


def strong_augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """augment_batch plus a random zoom (scale 0.85-1.15 about the centre, reflect padding when zooming out)
    and random erasing (half of the images lose one rectangle of 4-16% of the area, filled with noise).
    For data with few photos per class, where the standard augmentation overfits (faces: ~21 per person)."""
    b, _, h, w = x.shape
    x = augment_batch(x, gen)
    scale = 0.85 + 0.3 * torch.rand(b, generator=gen)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale  # output pixel -> input pixel: < 1 zooms in
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    erase = torch.rand(b, generator=gen) < 0.5
    area = 0.04 + 0.12 * torch.rand(b, generator=gen)
    aspect = torch.exp((torch.rand(b, generator=gen) - 0.5) * 1.4)  # 0.5-2
    eh = (area * aspect).sqrt().mul(h).round().long().clamp(1, h)
    ew = (area / aspect).sqrt().mul(w).round().long().clamp(1, w)
    ys = (torch.rand(b, generator=gen) * (h - eh + 1).float()).long()
    xs = (torch.rand(b, generator=gen) * (w - ew + 1).float()).long()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = (rows >= ys.view(b, 1, 1)) & (rows < (ys + eh).view(b, 1, 1))
    box = box & (cols >= xs.view(b, 1, 1)) & (cols < (xs + ew).view(b, 1, 1)) & erase.view(b, 1, 1)
    noise = torch.rand(x.shape, generator=gen) * 2 - 1
    return torch.where(box.unsqueeze(1), noise, x)


HOLE_SIDES = (1 / 4, 5 / 8)  # random_holes: the hole's side as a share of the image side, drawn uniformly
HOLE_SHARE = 0.5  # holes_augment_batch: share of the images given a hole


def random_holes(x: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """x (B, 3, R, R) with a random square hole, filled harmonically (`images.fill_smooth`, as the inpainting's
    class guess sees a photo with a hole), in about `share` of the images (a Bernoulli draw per image from `gen`)."""
    r = x.shape[-1]
    lo, hi = max(1, round(HOLE_SIDES[0] * r)), max(1, round(HOLE_SIDES[1] * r))
    picked = torch.nonzero(torch.rand(len(x), generator=gen) < share).flatten().tolist()
    if not picked:
        return x
    m = torch.zeros(len(picked), 1, r, r, dtype=torch.bool)
    for row in range(len(picked)):
        side = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        top, left = (int(torch.randint(0, r - side + 1, (1,), generator=gen)) for _ in range(2))
        m[row, :, top : top + side, left : left + side] = True
    out = x.clone()
    out[picked] = fill_smooth(x[picked], m)
    return out


def holes_augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """strong_augment_batch, then a random square hole filled smoothly in half of the images: for a class guesser
    that names the class of a photo with a hole (`cvaegan fit-guesser`), not for a judge."""
    return random_holes(strong_augment_batch(x, gen), HOLE_SHARE, gen)


AUGMENTATIONS = {"standard": augment_batch, "strong": strong_augment_batch, "holes": holes_augment_batch}


@torch.no_grad()
def predict(judge: Judge, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) for float images in [-1, 1] (any resolution; resized to the judge's)."""
    judge.eval()
    dev = next(judge.parameters()).device
    outs = [judge(x[i : i + batch_size].to(dev).float()) for i in range(0, len(x), batch_size)]
    return torch.cat([o[0] for o in outs]).cpu(), torch.cat([o[1] for o in outs]).cpu()


def predict_attributes(judge: Judge, x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """An attribute judge's estimates, in each attribute's own units, for float images in [-1, 1]."""
    cfg = judge.config
    if not cfg.targets:
        raise JudgeError("this judge classifies; attributes need `cvaegan judge --attributes`")
    out, _ = predict(judge, x, batch_size)
    mean, std = torch.tensor(cfg.target_mean), torch.tensor(cfg.target_std)
    out = out * std + mean
    return {name: out[:, i] for i, name in enumerate(cfg.targets)}


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination over the finite targets (1 = perfect, 0 = as good as the mean)."""
    ok = torch.isfinite(target)
    p, t = pred[ok].double(), target[ok].double()
    if len(t) < 2:
        return float("nan")
    return (1 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum().clamp_min(1e-12)).item()


def top1(judge: Judge, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    logits, _ = predict(judge, uint8_to_float(images_u8))
    return (logits.argmax(1) == labels).float().mean().item()


def train_judge(
    data: LabelledImages,
    out: str | os.PathLike,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 7,
    widths: list[int] | None = None,
    extra: LabelledImages | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    attributes: bool = False,
    stem_stride: int = 2,
    augment: str = "standard",
    classes: list[str] | None = None,
) -> JudgeConfig:
    """Train a judge on the 90% training split of `data` (plus `extra` images, e.g. generated ones for
    the augmentation experiment), report top-1 on the 10% held-out split, save to `out`.
    attributes=True trains an attribute judge instead: it regresses every attr_* column of the data's
    metadata.csv (standardised, mean squared error over the known values) and reports R^2 per attribute.

    The split is split_indices(labels, 0.1, seed=SPLIT_SEED): the same images `cvaegan train
    --val-fraction 0.1` holds out, so the judge and the generator never see the held-out images.
    classes: class folders to keep, in the order of the judge's outputs (e.g. a model's, which may leave some of
    the data's out); the split is still drawn over all of the data, so the held-out photos stay the same.
    """
    if attributes:
        if not data.attributes:
            raise JudgeError(
                "the data has no attr_* columns (metadata.csv beside the data with 'path' and attr_* "
                "columns); an attribute judge needs them"
            )
        if extra is not None:
            raise JudgeError("--extra images carry no attributes; train the attribute judge on real photos only")
    elif data.num_classes < 2:
        raise JudgeError(f"the judge needs at least 2 classes, the data has {data.num_classes}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JudgeError(f"cannot create {out} ({e}); choose a writable --out") from e
    device = torch.device(device)
    res = int(data.images.shape[-1])
    tr, va = split_indices(data.labels, 0.1, seed=SPLIT_SEED)
    if classes is not None:
        data, tr, va = keep_classes(data, classes, tr, va)
    x_tr, y_tr = data.images[tr], data.labels[tr]
    if extra is not None:
        if extra.class_folders != data.class_folders:
            raise JudgeError("the extra images must use the same class folders as the data")
        if extra.images.shape[-1] != res:
            raise JudgeError(f"extra images are {extra.images.shape[-1]} px, the data {res} px")
        x_tr, y_tr = torch.cat([x_tr, extra.images]), torch.cat([y_tr, extra.labels])
    if augment not in AUGMENTATIONS:
        raise JudgeError(f"unknown augmentation {augment!r}; choose one of {sorted(AUGMENTATIONS)}")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    cfg = JudgeConfig(
        resolution=res,
        num_classes=data.num_classes,
        widths=list(widths or [32, 64, 128, 256]),
        stem_stride=stem_stride,
        class_names=list(data.class_names),
        class_folders=list(data.class_folders),
    )
    if attributes:
        cfg.targets = sorted(data.attributes)
        t_all = torch.stack([data.attributes[k] for k in cfg.targets], 1).float()  # (N, A), NaN = unknown
        t_tr = t_all[tr]
        ok = torch.isfinite(t_tr)
        mean = torch.stack([t_tr[ok[:, i], i].mean() for i in range(len(cfg.targets))])
        std = torch.stack([t_tr[ok[:, i], i].std() for i in range(len(cfg.targets))]).clamp_min(1e-6)
        cfg.target_mean, cfg.target_std = [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]
        y_tr = (t_tr - mean) / std
    torch.manual_seed(seed)
    judge = Judge(cfg).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=0.05)
    n = len(y_tr)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="judge", disable=not progress, dynamic_ncols=True)
    history: list[dict] = []
    for epoch in range(epochs):
        judge.train()
        perm = torch.randperm(n, generator=gen)
        for k in range(per_epoch):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            out_, _ = judge(
                (shift_batch if attributes else AUGMENTATIONS[augment])(uint8_to_float(x_tr[idx]), gen).to(device)
            )
            y = y_tr[idx].to(device)
            if attributes:  # standardised targets; NaN = unknown, left out of the loss
                known = torch.isfinite(y)
                loss = F.mse_loss(out_[known], y[known])
            else:
                loss = F.cross_entropy(out_, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        if not attributes and len(va) and ((epoch + 1) % 5 == 0 or epoch + 1 == epochs):
            # held-out top-1 along the way: shows whether the judge has converged
            acc = top1(judge, data.images[va], data.labels[va])
            history.append(
                {"epoch": epoch + 1, "val_top1": round(acc, 4), "wall_s": round(time.perf_counter() - t0, 1)}
            )
            bar.write(f"judge epoch {epoch + 1}: held-out top-1 {acc:.4f}")
    bar.close()
    judge.eval()
    cfg.training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "augment": "shift" if attributes else augment,
        "train_images": n,
        "extra_images": 0 if extra is None else len(extra.labels),
        "val_images": len(va),
        "split": f"per class 90/10, split_indices(seed={SPLIT_SEED})",
        "wall_s": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "history": history,
    }
    if attributes:
        pred = predict_attributes(judge, uint8_to_float(data.images[va]))
        cfg.training["val_r2"] = {k: round(r_squared(pred[k], data.attributes[k][va]), 4) for k in cfg.targets}
    else:
        cfg.training["val_top1"] = round(top1(judge, data.images[va], data.labels[va]), 4)
    save_judge(judge, out)
    return judge.config


def keep_classes(data: LabelledImages, classes: list[str], *splits: torch.Tensor) -> tuple:
    """(`data` reduced to the class folders `classes`, relabelled 0..len-1 in that order, then each index tensor
    in `splits` (positions in `data`) mapped to positions in the reduced data, the other classes' photos dropped).
    JudgeError naming them when the data lacks some of `classes`."""
    where = {f: i for i, f in enumerate(classes)}
    missing = [f for f in classes if f not in set(data.class_folders)]
    if missing:
        raise JudgeError(
            f"the data has no photos of {len(missing)} of the {len(classes)} classes asked for "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    mapped = torch.tensor([where.get(f, -1) for f in data.class_folders], dtype=torch.int64)
    keep = torch.nonzero(mapped[data.labels] >= 0).flatten()
    position = torch.full((len(data.labels),), -1, dtype=torch.int64)
    position[keep] = torch.arange(len(keep))
    sub = data.subset(keep)
    sub.labels = mapped[sub.labels]
    sub.class_folders = list(classes)
    names = dict(zip(data.class_folders, data.class_names))
    sub.class_names = [names[f] for f in classes]
    return (sub, *(position[idx][position[idx] >= 0] for idx in splits))


def save_judge(judge: Judge, out: str | os.PathLike) -> Path:
    """OUT/config.json + OUT/judge.safetensors."""
    return judge.write_folder(
        out, {JUDGE_FILE: unwrap_state(judge)}, {JUDGE_FILE: {"format": "pt", "kind": JUDGE_KIND}}
    )


def load_judge(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """A judge folder, checked by sha256 and loaded strictly; eval mode, on `device`."""
    return Judge.from_folder(folder, device)


def load_attribute_judge(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """load_judge, refusing a class judge (the latent directions need attribute estimates)."""
    judge = load_judge(folder, device)
    if not judge.config.targets:
        raise JudgeError(f"{folder} is a class judge; pass one made with `cvaegan judge --attributes`")
    return judge
