"""`cvaegan evaluate`: a generator measured by an independent judge, on held-out images of its data set.

Every distribution metric uses the judge's features (its penultimate layer, see judge.py) or logits,
not ImageNet Inception: the numbers compare models of *this* data set with each other and are NOT
comparable to published FID / IS values. Metrics come from maintained libraries: torchmetrics (FID,
KID, IS with the judge as a custom feature extractor; MS-SSIM, SSIM), prdc (precision / recall /
density / coverage, Naeem et al. 2020) and OpenCV (Telea and Navier-Stokes inpainting baselines).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import blend, inference as I
from .data import LabelledImages, split_indices
from .errors import InputError
from .images import pil_to_uint8, psnr, uint8_to_float
from .judge import Judge, predict
from .models import CVAEGAN
from .seeds import z_from_seeds

REPORT_FORMAT = "cvaegan-evaluation/1"
FIRST_SEED = 20_000  # generated samples use seeds FIRST_SEED + i (disjoint from the app's small seeds)
RECON_REFINE_STEPS = 50  # the extra reconstruction figure: E's code refined on each photo for this many steps


class EvaluationError(InputError):
    """The weights, judge and data do not fit together; the message says how."""


def require_libraries() -> None:
    """The metric libraries are evaluation-only dependencies (requirements-dev.txt, or the `dev` extra)."""
    import importlib.util

    missing = [
        pip
        for mod, pip in (
            ("torchmetrics", "torchmetrics"),
            ("prdc", "prdc"),
            ("cv2", "opencv-python-headless"),
            ("scipy", "scipy"),
        )
        if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise EvaluationError(
            f"evaluation needs {', '.join(missing)}: pip install -r requirements-dev.txt (or pip install -e '.[dev]')"
        )


class _Given(torch.nn.Module):
    """torchmetrics' "feature extractor" for vectors computed already (the judge's features or logits, by
    judge.predict): it passes them through, so each image set goes through the judge once for all metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


# ---- metrics (each a thin, tested wrapper around a library) ------------------------------------


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, kid: bool = True) -> dict:
    """FID and KID between two sets of judge features ((N, D) from judge.predict on images in [-1, 1]), as
    torchmetrics computes them (features accumulated in float64). kid=False skips KID (the release gate uses
    FID only)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(len(real), len(fake)) < 2:
        raise EvaluationError(
            f"FID needs two (N, D) feature sets of the same D and N >= 2, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    feat = _Given(real.shape[1])
    metrics = [FrechetInceptionDistance(feature=feat, normalize=False)]
    subset = min(1000, len(real), len(fake))
    if kid:
        with warnings.catch_warnings():  # "will save all extracted features": a few thousand vectors here
            warnings.simplefilter("ignore", UserWarning)
            metrics.append(KernelInceptionDistance(feature=feat, subsets=50, subset_size=subset, normalize=False))
    for m in metrics:
        for i in range(0, len(real), 256):
            m.update(real[i : i + 256], real=True)
        for i in range(0, len(fake), 256):
            m.update(fake[i : i + 256], real=False)
    out = {"fid": float(metrics[0].compute())}
    if kid:
        torch.manual_seed(seed)  # KID draws random subsets
        kid_mean, kid_std = metrics[1].compute()
        out.update(kid_mean=float(kid_mean), kid_std=float(kid_std), kid_subset_size=subset)
    return out


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> dict:
    """Inception score computed from the judge's logits (torchmetrics' formula: exp E[KL(p(y|x) || p(y))])."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():  # the buffer warning, and std() of a single split
        warnings.simplefilter("ignore", UserWarning)
        m = InceptionScore(feature=_Given(logits.shape[1]), splits=max(1, min(splits, len(logits))), normalize=False)
        m.update(logits.double())
        torch.manual_seed(seed)  # the score shuffles before splitting
        mean, std = m.compute()
    return {"mean": float(mean), "std": float(0.0 if torch.isnan(std) else std)}


PRDC_MIN_IMAGES = 3  # prdc's k-th-neighbour radius needs k + 2 points per set, k >= 1


def prdc_metrics(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 5) -> dict:
    """Precision, recall, density, coverage (prdc package) on judge features. Each set needs at least 3 points:
    prdc's radius is the distance to the k-th neighbour other than the point itself, so k is at most n - 2."""
    from prdc import compute_prdc

    n = min(len(real_feats), len(fake_feats))
    if n < PRDC_MIN_IMAGES:
        raise InputError(
            f"precision and recall need at least {PRDC_MIN_IMAGES} real and {PRDC_MIN_IMAGES} generated images, got {n}"
        )
    k = max(1, min(k, n - 2))
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes; ours are in the report
        out = compute_prdc(
            real_features=real_feats.double().numpy(), fake_features=fake_feats.double().numpy(), nearest_k=k
        )
    return {name: float(v) for name, v in out.items()} | {"nearest_k": k}


def ms_ssim_kwargs(resolution: int) -> dict:
    """MS-SSIM settings that fit small images: 3 scales (the first three of the standard weights,
    renormalised) and a kernel small enough for the coarsest scale."""
    betas = (0.0448, 0.2856, 0.3001)
    s = sum(betas)
    kernel = 7 if resolution >= 64 else 5
    if resolution < (kernel - 1) * 4 + 1:
        raise EvaluationError(f"MS-SSIM needs images of at least {(kernel - 1) * 4 + 1} px, got {resolution}")
    return {"data_range": 1.0, "kernel_size": kernel, "betas": tuple(b / s for b in betas)}


def pairwise_ms_ssim(x: torch.Tensor, batch: int = 256) -> float:
    """Mean MS-SSIM over all unordered pairs of images in x (float, [-1, 1]); nan for < 2 images."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    n = len(x)
    if n < 2:
        return float("nan")
    ii, jj = torch.triu_indices(n, n, offset=1)
    kw = ms_ssim_kwargs(x.shape[-1])
    x01 = _to01(x)
    vals = []
    for s in range(0, len(ii), batch):
        a, b = x01[ii[s : s + batch]], x01[jj[s : s + batch]]
        vals.append(msssim(a, b, reduction="none", **kw).reshape(-1))
    return torch.cat(vals).mean().item()


def intra_class_diversity(x: torch.Tensor, labels: torch.Tensor) -> float:
    """1 - mean pairwise MS-SSIM among images of the same class, averaged over classes with >= 2 images."""
    per = [pairwise_ms_ssim(x[labels == c]) for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    return float("nan") if not per else 1.0 - float(np.mean(per))


def feature_spread(feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Variety within a class as the judge sees it: the mean pairwise cosine distance (1 - cosine similarity) of
    the features of images of the same class, averaged over classes with >= 2 images. 0 when a class's images
    all look alike to the judge. Samples bunched where the judge is sure score below photos of the class, and a
    model can gain top-1 that way (birds, 2026-12-07: 0.284 for a base 32 / max 128 run against 0.318 for base 16
    at equal CPU time; training photos 0.326, held-out photos 0.402)."""
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    per = []
    for c in labels.unique().tolist():
        g = f[labels == c]
        n = len(g)
        if n >= 2:
            per.append(1.0 - ((g @ g.T).sum() - n).item() / (n * (n - 1)))
    return float("nan") if not per else float(np.mean(per))


def psnr_ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of pred vs target (float, [-1, 1]); with a (B, 1, H, W) bool mask,
    both are averaged over the masked pixels only (SSIM: its per-pixel map restricted to the mask)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    p, t = _to01(pred), _to01(target)
    _, smap = ssim(p, t, data_range=1.0, reduction="none", return_full_image=True)
    w = (torch.ones_like(p[:, :1]) if mask is None else mask.float()).expand_as(smap)
    s = (smap * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1)
    return psnr(pred.clamp(-1, 1), target.clamp(-1, 1), mask), s


# ---- masks and inpainting baselines ------------------------------------------------------------

# The 25% box. On aligned faces it hides the eyes and the nose: the faces pack is aligned like CelebA's
# img_align_celeba (shared data README: eye centres at (69.0, 112.75) and (107.9, 112.75), mouth corners
# at y = 152.6 of the 178x218 frame, then rows 20..198 cropped), so at 64 px the eye centres sit at
# (24.8, 33.4) and (38.8, 33.4), the mouth corners at y = 47.7 and the nose tip near y = 41 (median
# attr_pitch 0.55 of the way from the eye line to the mouth). A square of half the side, centred
# horizontally with its top at 5/16 of the side (at 64 px: rows 20-51, columns 16-47), covers the brows,
# both eyes, the nose and the upper lip; no square of 25% can avoid the mouth entirely. Other data
# (flowers, birds: the subject is centred) get the centre box (at 64 px: rows 16-47, columns 16-47).
FACE_FOLDER_PREFIXES = ("celeba_", "lfw_")  # class ids of the faces pack (CelebA identity / LFW person)
BOX25_TOP = {"faces": 5 / 16, "centre": 1 / 4}  # the box's top edge, as a fraction of the side
MASK_KINDS = ("box25", "brush_thin", "brush")
LEGACY_KINDS = ("centre_box",)  # still measured: the model card's table reads it
CARD_INPAINT_PHOTOS = 64  # the model card's inpainting figures use this many held-out photos (`--inpaint-images`)
INPAINT_PICK_SEED = 99  # the held-out photos' order for the inpainting figures (`inpaint_photo_order`)
INPAINT_METHODS = ("cvaegan", "cvaegan_predicted_class", "telea", "navier_stokes", "mean_fill")


def box_layout(class_folders: list[str]) -> str:
    """'faces' for the aligned faces pack (every class folder a CelebA or LFW id), 'centre' for other data."""
    faces = class_folders and all(f.startswith(FACE_FOLDER_PREFIXES) for f in class_folders)
    return "faces" if faces else "centre"


def box25(resolution: int, layout: str = "centre") -> tuple[int, int, int]:
    """(top, left, side) of the square that hides a quarter of an R x R image (exactly when R is even)."""
    if layout not in BOX25_TOP:
        raise EvaluationError(f"unknown box layout {layout!r}; one of {sorted(BOX25_TOP)}")
    side = resolution // 2
    top = min(round(BOX25_TOP[layout] * resolution), resolution - side)
    return top, (resolution - side) // 2, side


def box25_mask(resolution: int, layout: str = "centre") -> torch.Tensor:
    """(1, 1, R, R) bool: the 25% box of `box25`."""
    top, left, side = box25(resolution, layout)
    m = torch.zeros(1, 1, resolution, resolution, dtype=torch.bool)
    m[..., top : top + side, left : left + side] = True
    return m


def centre_box_mask(resolution: int) -> torch.Tensor:
    """(1, 1, R, R) bool: the central square of half the side (a quarter of the pixels)."""
    return box25_mask(resolution, "centre")


def stroke_mask(
    resolution: int,
    seed: int,
    strokes: tuple[int, int] = (3, 7),
    width: tuple[float, float] = (0.06, 0.12),
    step: tuple[float, float] = (0.1, 0.25),
    segments: tuple[int, int] = (2, 5),
    min_width: int = 2,
) -> torch.Tensor:
    """(1, 1, R, R) bool: seeded free-form brush strokes (polylines with round joints), like a user painting.
    Counts are [low, high) integer ranges; width and step are fractions of the side."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(*strokes))):
        x, y = rng.uniform(0.15, 0.85, 2) * resolution
        w = int(max(min_width, rng.uniform(*width) * resolution))
        pts = [(x, y)]
        for _ in range(int(rng.integers(*segments))):
            ang = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(*step) * resolution
            x = float(np.clip(x + length * math.cos(ang), 0, resolution - 1))
            y = float(np.clip(y + length * math.sin(ang), 0, resolution - 1))
            pts.append((x, y))
        draw.line(pts, fill=255, width=w, joint="curve")
        for px, py in pts:
            r = w / 2
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
    return torch.from_numpy(np.asarray(img) > 0)[None, None]


def brush_mask(resolution: int, seed: int) -> torch.Tensor:
    """(1, 1, R, R) bool: 3-6 thick free-form strokes, 6-12% of the side wide (at 64 px: 3-7 px), seeded."""
    return stroke_mask(resolution, seed)


def brush_thin_mask(resolution: int, seed: int) -> torch.Tensor:
    """(1, 1, R, R) bool: 3-5 thin strokes (scratches), 3.5-6% of the side wide (at 64 px: 2-3 px), seeded."""
    return stroke_mask(resolution, seed, strokes=(3, 6), width=(0.035, 0.06), segments=(2, 4), min_width=1)


def make_mask(kind: str, resolution: int, index: int, layout: str = "centre") -> torch.Tensor:
    """The mask of one evaluation image: `kind` in MASK_KINDS or LEGACY_KINDS; strokes are seeded by the index."""
    if kind == "box25":
        return box25_mask(resolution, layout)
    if kind == "centre_box":
        return centre_box_mask(resolution)
    if kind == "brush":
        return brush_mask(resolution, seed=1000 + index)
    if kind == "brush_thin":
        return brush_thin_mask(resolution, seed=3000 + index)
    raise EvaluationError(f"unknown mask kind {kind!r}")


def opencv_inpaint(x: torch.Tensor, m: torch.Tensor, method: str) -> torch.Tensor:
    """OpenCV inpainting of one image: x (1, 3, R, R) in [-1, 1], m (1, 1, R, R) bool; method telea|ns."""
    import cv2

    img = ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    mask = m[0, 0].numpy().astype(np.uint8) * 255
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    out = cv2.inpaint(np.ascontiguousarray(img[..., ::-1]), mask, 3, flag)[..., ::-1]
    filled = torch.from_numpy(out.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return torch.where(m, filled, x)  # known pixels exactly as given (no 8-bit rounding)


def mean_fill(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Masked pixels replaced by the mean colour of the known pixels of the same image."""
    return I.fill_known_mean(x, m)


def user_inpaint(
    model: CVAEGAN,
    photo: torch.Tensor,
    m: torch.Tensor,
    cls: int | None,
    iterations: int,
    feather: float | None = None,
) -> tuple[torch.Tensor, int]:
    """What a user of the app (or of `cvaegan inpaint`) gets for one photo: `blend.inpaint` (the class guess picks
    the class when cls is None, as the app's 'auto'), seamless paste included, with the weights' detail feather
    unless `feather` is given. photo: (3, H, W) uint8; m: (1, 1, H, W) bool. Returns (the result as (1, 3, H, W)
    float in [-1, 1], the class used)."""
    r = blend.inpaint(model, photo.permute(1, 2, 0).numpy(), m[0, 0].numpy(), cls, iterations, feather=feather)
    return uint8_to_float(pil_to_uint8(r["image"]))[None], int(r["class"])


def user_inpaint_feathers(
    model: CVAEGAN, photo: torch.Tensor, m: torch.Tensor, cls: int, iterations: int, feathers: list[float]
) -> dict[float, torch.Tensor]:
    """`user_inpaint` with each of `feathers` (model pixels), from one model pass: {feather: (1, 3, H, W) float}."""
    r = blend.inpaint(model, photo.permute(1, 2, 0).numpy(), m[0, 0].numpy(), cls, iterations, feathers=feathers)
    return {f: uint8_to_float(pil_to_uint8(img))[None] for f, img in r["feathered"].items()}


MIN_Z = 1.64  # McNemar's z for "clearly better" (one-sided 95%): the release gate's margin, the guesser's, noise's edge


def mcnemar(first: str, second: str, what: str = "samples") -> tuple[int, int, float]:
    """McNemar's paired counts over two equal-length strings of hits ("1" right, "0" wrong, one character per
    item both were judged on): b right for `first` only, c for `second` only, z = (b - c) / sqrt(b + c), 0 when
    no item differs. The release gate, the guesser's share and the inpainting comparison all use it."""
    if len(first) != len(second):
        raise InputError(f"the two were judged on different numbers of {what} ({len(first)} vs {len(second)})")
    b = sum(x == "1" and y == "0" for x, y in zip(first, second))
    c = sum(x == "0" and y == "1" for x, y in zip(first, second))
    return b, c, round((b - c) / math.sqrt(b + c), 3) if b + c else 0.0


def inpaint_photo_order(count: int) -> torch.Tensor:
    """The order in which the inpainting figures take held-out photos: the card measures the first 64 (or
    `--inpaint-images`), `cvaegan fit-feather` the ones after them, so the card's photos stay unseen by it."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(INPAINT_PICK_SEED))


def judge_indices(judge: Judge, class_folders: list[str]) -> torch.Tensor:
    """The judge's class index of each folder, matched by folder name (never by position)."""
    where = {f: i for i, f in enumerate(judge.config.class_folders)}
    missing = [f for f in class_folders if f not in where]
    if missing:
        raise EvaluationError(
            f"the judge does not know {len(missing)} of the data's classes (e.g. {missing[0]!r}); "
            "train a judge on this data set (`cvaegan judge --data ...`)"
        )
    return torch.tensor([where[f] for f in class_folders])


def _model_classes(model: CVAEGAN, folders: list[str]) -> list[int | None]:
    """The model's class index of each data folder, by name; None for a folder the model does not have (a
    class left out of training)."""
    where = {f: i for i, f in enumerate(model.config.class_folders)}
    return [where.get(f) for f in folders]


def inpainting_scores(
    model: CVAEGAN,
    val: LabelledImages,
    count: int,
    iterations: int | None = None,
    bar: tqdm | None = None,
    judge: Judge | None = None,
    layout: str | None = None,
    kinds: tuple[str, ...] = MASK_KINDS + LEGACY_KINDS,
    feather: float | None = None,
) -> dict:
    """Inpainting as a user gets it, against OpenCV's Telea and Navier-Stokes and a mean-colour fill.

    Ours runs `blend.inpaint`, the app's and the CLI's pipeline (seamless paste included), at the app's
    default iteration count unless `iterations` is given, once with the photo's true class and once with
    the guess of the class (the app's 'auto': the weights' class guesser, or C). For every mask kind: PSNR / SSIM inside the hole and, with a judge, the
    judge's top-1 on the inpainted photos of every method (classes matched by folder name), and for ours (true class
    and guessed) `judge_vs_telea`: McNemar's counts against Telea photo by photo (`mcnemar`); the judge's
    top-1 on the untouched photos is the ceiling, on the mean-colour fill the floor. `layout`: where the 25%
    box goes ('faces' or 'centre'; default from the data's class folders, see `box_layout`). `feather`: the detail
    feather in model pixels (`blend.seamless_paste`; default: the weights' own, as users get it)."""
    r = model.config.resolution
    iterations = blend.DEFAULT_ITERATIONS if iterations is None else iterations
    layout = box_layout(val.class_folders) if layout is None else layout
    model_cls = _model_classes(model, val.class_folders)
    known = torch.tensor([model_cls[int(y)] is not None for y in val.labels], dtype=torch.bool)
    if not known.any():
        raise EvaluationError("the weights have none of the data's classes; pass the data set they were trained on")
    if not known.all():  # photos of classes the model does not have: no true class to give it
        val = val.subset(torch.nonzero(known).flatten())
    n = min(count, len(val.labels))
    pick = inpaint_photo_order(len(val.labels))[:n]
    photos = val.images[pick]
    x_all = uint8_to_float(photos)
    y_all = val.labels[pick]
    true_cls = [model_cls[int(y)] for y in y_all]
    judge_y = judge_indices(judge, val.class_folders)[y_all] if judge is not None else None
    report: dict = {
        "pipeline": "blend.inpaint (the app's and the CLI's: model window, harmonic start, Poisson-blended paste)",
        "images": n,
        "skipped_photos_of_classes_the_model_lacks": int((~known).sum()),
        "iterations": iterations,
        "box25_layout": layout,
        "guess_by": I.guess_source(model),  # who names the class in 'auto' mode
        "feather_px": model.config.inpaint_feather if feather is None else feather,
    }
    if judge is not None:
        report["judge_top1_original"] = round(_judge_top1(judge, x_all, judge_y), 4)
    done: dict[str, dict] = {}
    for kind in kinds:
        if kind == "centre_box" and layout == "centre" and "box25" in done:
            report[kind] = done["box25"]  # the same mask: the same figures
            if bar is not None:
                bar.update(n)
            continue
        scores = {k: ([], []) for k in INPAINT_METHODS}
        outs = {k: [] for k in INPAINT_METHODS}
        holes, guessed = [], []
        for i in range(n):
            x = x_all[i : i + 1]
            m = make_mask(kind, r, i, layout)
            holes.append(m.float().mean().item())
            ours, _ = user_inpaint(model, photos[i], m, true_cls[i], iterations, feather)
            auto, guess = user_inpaint(model, photos[i], m, None, iterations, feather)
            guessed.append(guess == true_cls[i])
            result = {
                "cvaegan": ours,
                "cvaegan_predicted_class": auto,
                "telea": opencv_inpaint(x, m, "telea"),
                "navier_stokes": opencv_inpaint(x, m, "ns"),
                "mean_fill": mean_fill(x, m),
            }
            for k, out in result.items():
                p, s = psnr_ssim(out, x, m)
                scores[k][0].append(p.item())
                scores[k][1].append(s.item())
                outs[k].append(out)
            if bar is not None:
                bar.update(1)
        entry: dict = {"hole_fraction": round(float(np.mean(holes)), 4)}
        if kind in ("box25", "centre_box"):
            entry["box"] = dict(zip(("top", "left", "side"), box25(r, layout if kind == "box25" else "centre")))
        hits = {}
        for k, (p, s) in scores.items():
            entry[k] = {"psnr_db": round(float(np.mean(p)), 3), "ssim": round(float(np.mean(s)), 4)}
            if judge is not None:
                hits[k] = _judge_hits(judge, torch.cat(outs[k]), judge_y)
                entry[k]["judge_top1"] = round(hits[k].count("1") / n, 4)
        for k in ("cvaegan", "cvaegan_predicted_class") if judge is not None else ():
            b, c, z = mcnemar(hits[k], hits["telea"], "photos")
            entry[k]["judge_vs_telea"] = {"ours_only": b, "telea_only": c, "z": z}
        entry["cvaegan_predicted_class"]["class_guess_top1"] = round(float(np.mean(guessed)), 4)
        report[kind] = done[kind] = entry
    return report


def _judge_hits(judge: Judge, x: torch.Tensor, y: torch.Tensor) -> str:
    """ "1" where the judge names the photo's class, "0" where not: one character per photo, for paired tests."""
    logits, _ = predict(judge, x)
    return "".join("1" if h else "0" for h in (logits.argmax(1).cpu() == y).tolist())


def _judge_top1(judge: Judge, x: torch.Tensor, y: torch.Tensor) -> float:
    hits = _judge_hits(judge, x, y)
    return hits.count("1") / len(hits)


def _beats(ours: dict, telea: dict) -> list[str]:
    """Where ours falls short of Telea (empty when ours >= Telea on PSNR and, if measured, judge top-1)."""
    short = []
    if ours["psnr_db"] < telea["psnr_db"]:
        short.append(f"PSNR {ours['psnr_db']:.2f} < {telea['psnr_db']:.2f} dB")
    if "judge_top1" in ours and ours["judge_top1"] < telea["judge_top1"]:
        text = f"judge top-1 {ours['judge_top1']:.1%} < {telea['judge_top1']:.1%}"
        if "judge_vs_telea" in ours:  # the paired counts say whether the gap is more than noise
            v = ours["judge_vs_telea"]
            text += (
                f": Telea alone kept the class on {_photos(v['telea_only'])}, ours alone on "
                f"{_photos(v['ours_only'])}, McNemar z {v['z']:.2f}" + (", within noise" if v["z"] > -MIN_Z else "")
            )
        short.append(text)
    return short


def _photos(k: int) -> str:
    return f"{k} photo" + ("" if k == 1 else "s")


def guess_label(inp: dict) -> str:
    """ "C's guess", "the class guesser's guess" or "C and the class guesser's guess" (`inference.guess_source`): who
    named the class of an `inpainting_scores` report's 'auto' runs."""
    return f"{inp.get('guess_by', 'C')}'s guess"


def inpainting_verdict(entry: dict, target: bool = True, guess: str = "C's guess") -> str:
    """Ours (true class, and the guessed class: `guess` names whose guess) against Telea on PSNR inside the hole
    and the judge's top-1: 'target met' / 'target missed (figures)'; for masks without a target (the strokes),
    'ours >= Telea' / 'Telea ahead (figures)'."""
    parts = []
    for key, label in (("cvaegan", "true class"), ("cvaegan_predicted_class", guess)):
        short = "; ".join(_beats(entry[key], entry["telea"]))
        if target:
            parts.append(f"{label}: target " + (f"missed ({short})" if short else "met"))
        else:
            parts.append(f"{label}: " + (f"Telea ahead ({short})" if short else "ours >= Telea"))
    return "; ".join(parts)


def inpainting_table(inp: dict) -> str:
    """Markdown: ours vs Telea for each mask kind of an `inpainting_scores` report, with a verdict column.
    The target (ours >= Telea on PSNR inside the hole and on the judge's top-1) is set for the 25% box; the
    strokes are reported beside it, with Telea's lead stated where it has one."""
    judged = "judge_top1_original" in inp
    guess = guess_label(inp)
    head = f"| mask | hole | PSNR in the hole: ours, true class / ours, {guess} / Telea |"
    if judged:
        head += (
            f" judge top-1: ours, true class / ours, {guess} / Telea |"
            " judge top-1: photo (ceiling) / mean fill (floor) |"
        )
    lines = [head + " verdict |", "|---" * head.count("|") + "|"]
    names = {"box25": "25% box", "brush_thin": "thin strokes", "brush": "free-form brush"}
    for kind in MASK_KINDS:
        if kind not in inp:
            continue
        e = inp[kind]
        name = names[kind]
        if kind == "box25":
            t, left, side = e["box"]["top"], e["box"]["left"], e["box"]["side"]
            name += f" ({inp['box25_layout']}: rows {t}-{t + side - 1}, columns {left}-{left + side - 1})"
        row = (
            f"| {name} | {e['hole_fraction']:.1%} | {e['cvaegan']['psnr_db']:.2f} / "
            f"{e['cvaegan_predicted_class']['psnr_db']:.2f} / {e['telea']['psnr_db']:.2f} dB |"
        )
        if judged:
            row += (
                f" {e['cvaegan']['judge_top1']:.1%} / {e['cvaegan_predicted_class']['judge_top1']:.1%} / "
                f"{e['telea']['judge_top1']:.1%} | {inp['judge_top1_original']:.1%} / "
                f"{e['mean_fill']['judge_top1']:.1%} |"
            )
        lines.append(row + f" {inpainting_verdict(e, target=kind == 'box25', guess=guess)} |")
    return "\n".join(lines) + "\n"


# ---- the whole report --------------------------------------------------------------------------


def check_compatible(model: CVAEGAN, judge: Judge, data: LabelledImages) -> None:
    mc, jc = model.config, judge.config
    if jc.targets:
        raise EvaluationError(
            "this is an attribute judge (it regresses attr_* columns); evaluation needs a class "
            "judge from `cvaegan judge` without --attributes"
        )
    if mc.class_folders and not set(mc.class_folders) <= set(data.class_folders):
        raise EvaluationError(
            "the weights were trained on other classes than the data's folders; "
            "pass the data set the weights were trained on"
        )
    if jc.class_folders != data.class_folders:
        raise EvaluationError(
            "the judge was trained on other classes than the data's folders; "
            "train a judge on this data set (`cvaegan judge --data ...`)"
        )


def check_truncation(truncation: float) -> None:
    """The samples' z scale `evaluate` accepts: the app slider's range."""
    if not 0 <= truncation <= 2:
        raise EvaluationError(f"--truncation must be between 0 and 2 (1 = z ~ N(0, I)), got {truncation}")


def evaluate(
    model: CVAEGAN,
    judge: Judge,
    data: LabelledImages,
    samples_per_class: int = 8,
    classes: list[int] | None = None,
    inpaint_images: int = CARD_INPAINT_PHOTOS,
    progress: bool = True,
    *,
    inpaint_iterations: int | None = None,
    box: str | None = None,
    truncation: float = 1.0,
    recon_refine_steps: int = RECON_REFINE_STEPS,
    inpaint_feather: float | None = None,
) -> dict:
    """All figures of the evaluation issue for one generator; `data` at the model's resolution.
    Inpainting (see `inpainting_scores`): the app's default iterations unless `inpaint_iterations` is given;
    `box`: 'faces' or 'centre' for the 25% box (default: from the data's class folders). `truncation` scales
    the samples' z (the app's slider; 1 = the paper's N(0, I), as every published figure uses), trading
    variety for typical, more recognisable samples. `recon_refine_steps` > 0 also reports the reconstruction
    after that many steps of z refinement on each photo (`inference.refine_codes`, the app's Reconstruct slider);
    the reconstruction target counts E -> G alone. `inpaint_feather`: the inpainting's detail feather in model
    pixels (default: the weights' own, `cvaegan fit-feather`)."""
    require_libraries()
    check_compatible(model, judge, data)
    if samples_per_class < 1:
        raise EvaluationError("--samples-per-class must be at least 1")
    if recon_refine_steps < 0:
        raise EvaluationError("--recon-refine-steps must be 0 or more")
    if inpaint_feather is not None and not 0 <= inpaint_feather <= 64:
        raise EvaluationError(f"--inpaint-feather must be 0 to 64 model pixels, got {inpaint_feather}")
    check_truncation(truncation)
    k = model.config.num_classes
    classes = list(range(k)) if classes is None else classes
    _, va = split_indices(data.labels, 0.1)  # drawn on all of the data's classes, as `train` draws it
    val = data.subset(va)
    # weights trained with --exclude-classes: measure on the held-out photos of the classes they have
    model_cls = _model_classes(model, data.class_folders)
    left_out = [f for f, c in zip(data.class_folders, model_cls) if c is None]
    if left_out:
        val = val.subset(torch.nonzero(torch.tensor([model_cls[int(y)] is not None for y in val.labels])).flatten())
    val_model_labels = torch.tensor([model_cls[int(y)] for y in val.labels], dtype=torch.int64)
    judge_of_model = judge_indices(judge, model.config.class_folders)
    x_val = uint8_to_float(val.images)
    t0 = time.perf_counter()
    n_fake = len(classes) * samples_per_class
    kinds = MASK_KINDS + LEGACY_KINDS
    steps = (
        n_fake + len(kinds) * min(inpaint_images, len(val.labels)) + 4 + (len(val.labels) if recon_refine_steps else 0)
    )
    bar = tqdm(total=steps, desc="evaluate", disable=not progress, dynamic_ncols=True)

    # generated samples: class c, seeds FIRST_SEED + i
    c_fake = torch.tensor(classes).repeat_interleave(samples_per_class)
    z = z_from_seeds([FIRST_SEED + i for i in range(n_fake)], model.config.z_dim, truncation)
    fakes = []
    for i in range(0, n_fake, 64):
        fakes.append(I.generate(model, z[i : i + 64], c_fake[i : i + 64], batch_size=64))
        bar.update(len(fakes[-1]))
    x_fake = torch.cat(fakes)

    logits_f, feats_f = predict(judge, x_fake)
    logits_r, feats_r = predict(judge, x_val)
    hits = (logits_f.argmax(1) == judge_of_model[c_fake]).float().view(len(classes), samples_per_class).mean(1)
    real_top1 = (logits_r.argmax(1) == val.labels).float().mean().item()
    bar.update(1)

    dist = fid_kid(feats_r, feats_f)
    pr = prdc_metrics(feats_r, feats_f)
    bar.update(1)
    div_fake = intra_class_diversity(x_fake, c_fake)
    div_real = intra_class_diversity(x_val, val.labels)
    bar.update(1)

    rec_p, rec_s = psnr_ssim(I.reconstruct_batch(model, x_val, val_model_labels), x_val)
    reconstruction = {"psnr_db": round(rec_p.mean().item(), 3), "ssim": round(rec_s.mean().item(), 4)}
    if recon_refine_steps:
        ref = I.reconstruct_batch(model, x_val, val_model_labels, refine_steps=recon_refine_steps, progress=bar.update)
        ref_p, ref_s = psnr_ssim(ref, x_val)
        reconstruction["refined"] = {
            "steps": recon_refine_steps,
            "psnr_db": round(ref_p.mean().item(), 3),
            "ssim": round(ref_s.mean().item(), 4),
        }
    bar.update(1)
    inpaint = (
        inpainting_scores(model, val, inpaint_images, inpaint_iterations, bar, judge, box, kinds, inpaint_feather)
        if inpaint_images > 0
        else {}
    )
    bar.close()
    return {
        "format": REPORT_FORMAT,
        "feature_space": "the judge's penultimate layer (not Inception): comparable only between models of this data set",
        "classes": len(classes),
        "classes_left_out_of_training": left_out,
        "chance_top1": round(1 / len(data.class_folders), 5),
        "samples_per_class": samples_per_class,
        "truncation": truncation,
        "generated_images": n_fake,
        "val_images": len(val.labels),
        "discriminability": {
            "judge_top1_generated": round(hits.mean().item(), 4),
            "judge_top1_real_val": round(real_top1, 4),
            "judge_top1_generated_per_class": {
                model.config.class_names[c]: round(v, 4) for c, v in zip(classes, hits.tolist())
            },
        },
        "inception_score_judge": {"generated": inception_score(logits_f), "real_val": inception_score(logits_r)},
        "fid_judge": round(dist["fid"], 4),
        "kid_judge": {
            "mean": round(dist["kid_mean"], 5),
            "std": round(dist["kid_std"], 5),
            "subset_size": dist["kid_subset_size"],
        },
        "prdc_judge": {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in pr.items()},
        "intra_class_diversity": {
            "generated": round(div_fake, 4),
            "real_val": round(div_real, 4),
            "definition": "1 - mean pairwise MS-SSIM (3 scales) among same-class images",
        },
        "reconstruction": reconstruction,
        "inpainting": inpaint,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def write_report(report: dict, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
