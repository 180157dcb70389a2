"""Latent directions (the app's sliders): fitting them (principal components of E's codes, regressions of
named attributes on z) and checking how they move generated samples. Applying them is inference.edit."""

from __future__ import annotations

import torch

from . import inference as I
from .errors import InputError
from .images import uint8_to_float
from .judge import predict_attributes
from .models import CVAEGAN
from .seeds import z_from_seeds
from .train import grid_classes


@torch.no_grad()
def encoder_means(model: CVAEGAN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """E's means for uint8 images (N, 3, R, R) with labels (N,) -> (N, z_dim)."""
    model.encoder.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = uint8_to_float(images[i : i + batch_size]).to(model.device)
        out.append(model.encoder(x, labels[i : i + batch_size].to(model.device))[0].float().cpu())
    return torch.cat(out)


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Weights w of the ridge regression y ~ x w on centred x (N, D) and y (N,)."""
    x, y = x.double(), y.double()
    return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y).float()


@torch.no_grad()
def judged_attributes(
    model: CVAEGAN, judge, samples: int = 4096, first_seed: int = 100_000, batch_size: int = 128
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generate `samples` images (z from seeds first_seed.., classes drawn uniformly with that seed)
    and let an attribute judge (`cvaegan judge --attributes`) estimate their attributes.
    Returns (z (N, z_dim), {attribute: (N,) estimates in the attribute's units})."""
    if samples < 2 * model.config.z_dim:
        raise InputError(
            f"need at least {2 * model.config.z_dim} samples to fit directions in a "
            f"{model.config.z_dim}-d latent space, got {samples}"
        )
    gen = torch.Generator().manual_seed(first_seed)
    cls = torch.randint(0, model.config.num_classes, (samples,), generator=gen)
    z = z_from_seeds(list(range(first_seed, first_seed + samples)), model.config.z_dim)
    est: dict[str, list[torch.Tensor]] = {}
    for i in range(0, samples, batch_size):
        x = I.generate(model, z[i : i + batch_size], cls[i : i + batch_size], batch_size)
        for name, v in predict_attributes(judge, x, batch_size).items():
            est.setdefault(name, []).append(v)
    return z, {name: torch.cat(v) for name, v in est.items()}


def compute_directions(
    model: CVAEGAN,
    images: torch.Tensor,
    labels: torch.Tensor,
    k: int = 8,
    attributes: dict[str, torch.Tensor] | None = None,
    ridge: float = 1.0,
    judge=None,
    judge_samples: int = 4096,
    decorrelate: bool = False,
) -> dict:
    """Set model.directions / direction_scales / config.directions.

    (a) per attribute (e.g. attr_smile): a ridge regression of the attribute on z; the direction is
        the regression weight vector normalised, and one unit of amount moves the predicted attribute
        by one standard deviation of the real photos' values (scale = sd / ||w||). Two ways to get (z, attribute) pairs:
        - default: E's means of the real images against their metadata values (`attributes`);
        - with `judge` (an attribute judge): `judge_samples` generated images, z from the prior,
          their attributes as the judge estimates them. This fits how G actually responds to z,
          which the codes of real photos need not show (E's codes can vary along directions G ignores).
        With `decorrelate`, each attribute's weight vector is made orthogonal to the others' first, so
        that its slider leaves the other attributes unchanged to first order (conditional editing, as in
        InterFaceGAN, Shen et al. 2020); one unit still moves its own attribute by one unit.
    (b) the top-k principal directions of E's means of the images (amount unit: one standard deviation).
    Attribute directions come first in the saved order. Returns {attribute: fit summary}.
    """
    mu = encoder_means(model, images, labels)
    centred = mu - mu.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    if judge is not None:  # the real photos' spread comes from the judge's training split
        zs, values_by_name = judged_attributes(model, judge, judge_samples)
        zs, source = zs - zs.mean(0), "generated samples, judged"
        sds = dict(zip(judge.config.targets, judge.config.target_std))
    else:
        zs, values_by_name, source = centred, attributes or {}, "E's codes of the real images"
        sds = {n: v[torch.isfinite(v)].std().item() for n, v in values_by_name.items() if torch.isfinite(v).sum() > 1}
    weights, fits = {}, {}
    for name, values in sorted(values_by_name.items()):  # named attributes first: they lead the sliders
        ok = torch.isfinite(values)
        if ok.sum() < 10 or values[ok].std() == 0:
            continue
        x, y = zs[ok], values[ok] - values[ok].mean()
        w = _ridge(x, y, ridge)
        if w.norm() == 0:
            continue
        resid = y - x @ w
        weights[name] = w
        fits[name] = {
            "source": source,
            "n": int(ok.sum()),
            "r2": round(1 - (resid.var() / y.var()).item(), 3),
            "sd_per_unit_latent": round(w.norm().item() / sds[name], 5),
            "decorrelated": decorrelate,
        }
    dirs, scales, names, units = [], [], [], []
    for name, w in weights.items():
        if decorrelate and len(weights) > 1:
            # remove the parts of w that move the other attributes: along the result, the others stay
            # constant to first order, and this one changes by |d| per unit of latent distance
            q, _ = torch.linalg.qr(torch.stack([v for n, v in weights.items() if n != name], 1))
            w = w - q @ (q.T @ w)
        norm = w.norm()
        if norm < 1e-8:
            continue
        dirs.append(w / norm)
        scales.append(float(sds[name] / norm))
        names.append(name)
        units.append("std")
    for i in range(k):
        v = vh[i]
        # fix the sign so that the direction points towards the heavier tail (deterministic)
        proj = centred @ v
        if proj.pow(3).mean() < 0:
            v = -v
        dirs.append(v)
        scales.append(float(s[i] / (len(mu) - 1) ** 0.5))
        names.append(f"pc{i + 1}")
        units.append("std")
    model.directions = torch.stack(dirs).float()
    model.direction_scales = torch.tensor(scales, dtype=torch.float32)
    model.config.directions, model.config.direction_units = names, units
    return fits


def _luma_box(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> luma (B, h, w) in [0, 1] of the central half (a stand-in for the face box)."""
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] + 1) / 2
    h, w = y.shape[-2:]
    return y[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]


# Attributes that can be re-measured from pixels alone (the others need a landmark detector).
PIXEL_MEASURES = {
    "attr_brightness": lambda x: _luma_box(x).mean((1, 2)),
    "attr_light_lr": lambda x: (
        lambda y: y[:, :, y.shape[-1] // 2 :].mean((1, 2)) - y[:, :, : y.shape[-1] // 2].mean((1, 2))
    )(_luma_box(x)),
}


@torch.no_grad()
def check_directions(
    model: CVAEGAN, amounts: dict[str, float], classes: int = 64, seeds: int = 4, attribute_judge=None
) -> dict:
    """Move samples along each direction by -a, 0, +a: how often C still sees the same class, the
    re-measured attribute where it can be measured from pixels, and (with an attribute judge from
    `cvaegan judge --attributes`) every attribute the judge estimates, as means over the samples."""
    k = model.config.num_classes
    cls = torch.tensor(grid_classes(k, classes)).repeat_interleave(seeds)
    z = z_from_seeds([20_000 + i for i in range(len(cls))], model.config.z_dim)
    out = {}
    for name in model.config.directions:
        a = amounts.get(name, 2.0)
        row = {"amounts": [-a, 0.0, a], "class_kept": [], "measured": [], "samples": len(cls)}
        if attribute_judge is not None:
            row["judged"] = {t: [] for t in attribute_judge.config.targets}
        for amount in row["amounts"]:
            zz = torch.stack([I.edit(model, zi, {name: amount}) for zi in z])
            x = I.generate(model, zz, cls, batch_size=64)
            pred, _ = I.classify(model, x)
            row["class_kept"].append(round((pred == cls).float().mean().item(), 3))
            if name in PIXEL_MEASURES:
                row["measured"].append(round(PIXEL_MEASURES[name](x).mean().item(), 4))
            if attribute_judge is not None:
                for t, v in predict_attributes(attribute_judge, x).items():
                    row["judged"][t].append(round(v.mean().item(), 4))
        if attribute_judge is not None:
            unit = model.config.direction_units[model.config.directions.index(name)]
            row.update(
                judged_effects(
                    name, row, dict(zip(attribute_judge.config.targets, attribute_judge.config.target_std)), unit
                )
            )
        out[name] = row
    return out


@torch.no_grad()
def directions_sheet(
    model: CVAEGAN, amounts: dict[str, float], classes: tuple[int, ...] = (0, 1), seed: int = 20_000, steps: int = 5
) -> torch.Tensor:
    """For checking the sliders by eye: one row per (direction, class), columns from -a to +a in `steps`
    equal moves (the middle column is the unedited sample). Returns (rows * steps, 3, R, R)."""
    z = z_from_seeds([seed], model.config.z_dim)[0]
    rows = []
    for name in model.config.directions:
        a = amounts.get(name, 2.0)
        zz = torch.stack([I.edit(model, z, {name: float(t)}) for t in torch.linspace(-a, a, steps)])
        for c in classes:
            rows.append(I.generate(model, zz, torch.full((steps,), c % model.config.num_classes)))
    return torch.cat(rows)


def judged_effects(name: str, row: dict, stds: dict[str, float], unit: str = "std") -> dict:
    """From one direction's judged attribute means at -a / 0 / +a: the change of every attribute from
    -a to +a in standard deviations of the real photos' values; for an attr_* direction also its own
    attribute's change per slider unit, in the slider's unit (`unit`: "std" or, for older weights,
    "attribute units"; 1.0 = as intended) and the largest change among the other attributes (a side effect)."""
    a = row["amounts"][2]
    change_sd = {t: round((v[2] - v[0]) / stds[t], 3) for t, v in row["judged"].items()}
    res = {"change_sd": change_sd}
    others = {t: c for t, c in change_sd.items() if t != name}
    if others:
        worst = max(others, key=lambda t: abs(others[t]))
        res["largest_other"] = [worst, others[worst]]
    if name in row["judged"]:
        v = row["judged"][name]
        res["per_unit"] = round((v[2] - v[0]) / (2 * a) / (stds[name] if unit == "std" else 1.0), 3)
    return res
