"""`cvaegan evaluate`: a generator measured by an independent judge, on held-out images of its data set.

Every distribution metric uses the judge's features (its penultimate layer, see judge.py) or logits,
not ImageNet Inception: the numbers compare models of *this* data set with each other and are NOT
comparable to published FID / IS values. Metrics come from maintained libraries: torchmetrics (FID,
KID, IS with the judge as a custom feature extractor; MS-SSIM, SSIM), prdc (precision / recall /
density / coverage, Naeem et al. 2020) and OpenCV (Telea and Navier-Stokes inpainting baselines).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import inference as I
from .data import LabelledImages, split_indices
from .errors import InputError
from .images import psnr, uint8_to_float
from .judge import Judge, predict
from .models import CVAEGAN
from .seeds import z_from_seeds

REPORT_FORMAT = "cvaegan-evaluation/1"
FIRST_SEED = 20_000  # generated samples use seeds FIRST_SEED + i (disjoint from the app's small seeds)


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


class _JudgeFeatures(torch.nn.Module):
    """Adapter: torchmetrics calls feature(imgs) on float images in [-1, 1]; we return judge features."""

    def __init__(self, judge: Judge, logits: bool = False):
        super().__init__()
        self.judge, self.logits = judge, logits
        self.num_features = judge.config.num_classes if logits else judge.config.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, feats = predict(self.judge, x)
        return (logits if self.logits else feats).double()


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


# ---- metrics (each a thin, tested wrapper around a library) ------------------------------------


def fid_kid(judge: Judge, real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict:
    """FID and KID between two image sets (float, [-1, 1]) in the judge's feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    feat = _JudgeFeatures(judge)
    fid = FrechetInceptionDistance(feature=feat, normalize=False)
    subset = min(1000, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": a few thousand vectors here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=feat, subsets=50, subset_size=subset, normalize=False)
    for m in (fid, kid):
        for i in range(0, len(real), 256):
            m.update(real[i : i + 256], real=True)
        for i in range(0, len(fake), 256):
            m.update(fake[i : i + 256], real=False)
    torch.manual_seed(seed)  # KID draws random subsets
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
    }


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> dict:
    """Inception score computed from the judge's logits (torchmetrics' formula: exp E[KL(p(y|x) || p(y))])."""
    from torchmetrics.image.inception import InceptionScore

    class _Given(torch.nn.Module):
        def forward(self, x):  # the "images" are already logits
            return x

    with warnings.catch_warnings():  # the buffer warning, and std() of a single split
        warnings.simplefilter("ignore", UserWarning)
        m = InceptionScore(feature=_Given(), splits=max(1, min(splits, len(logits))), normalize=False)
        m.update(logits.double())
        torch.manual_seed(seed)  # the score shuffles before splitting
        mean, std = m.compute()
    return {"mean": float(mean), "std": float(0.0 if torch.isnan(std) else std)}


def prdc_metrics(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 5) -> dict:
    """Precision, recall, density, coverage (prdc package) on judge features."""
    from prdc import compute_prdc

    k = max(1, min(k, len(real_feats) - 1, len(fake_feats) - 1))
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


def centre_box_mask(resolution: int) -> torch.Tensor:
    """(1, 1, R, R) bool: the central square of half the side (a quarter of the pixels)."""
    m = torch.zeros(1, 1, resolution, resolution, dtype=torch.bool)
    a, b = resolution // 4, 3 * resolution // 4
    m[..., a:b, a:b] = True
    return m


def brush_mask(resolution: int, seed: int) -> torch.Tensor:
    """(1, 1, R, R) bool: 3-6 random thick brush strokes (free-form, like a user painting), seeded."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x, y = rng.uniform(0.15, 0.85, 2) * resolution
        width = int(max(2, rng.uniform(0.06, 0.12) * resolution))
        pts = [(x, y)]
        for _ in range(int(rng.integers(2, 5))):
            ang = rng.uniform(0, 2 * math.pi)
            step = rng.uniform(0.1, 0.25) * resolution
            x = float(np.clip(x + step * math.cos(ang), 0, resolution - 1))
            y = float(np.clip(y + step * math.sin(ang), 0, resolution - 1))
            pts.append((x, y))
        draw.line(pts, fill=255, width=width, joint="curve")
        for px, py in pts:
            r = width / 2
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
    return torch.from_numpy(np.asarray(img) > 0)[None, None]


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
    return I._fill_known_mean(x, m)


def inpainting_scores(
    model: CVAEGAN, val: LabelledImages, count: int, iterations: int = 4, bar: tqdm | None = None
) -> dict:
    """PSNR / SSIM inside the mask for our inpainting (true class given, and C's guess) and three baselines."""
    r = model.config.resolution
    n = min(count, len(val.labels))
    pick = torch.randperm(len(val.labels), generator=torch.Generator().manual_seed(99))[:n]
    x_all = uint8_to_float(val.images[pick])
    y_all = val.labels[pick]
    methods = ("cvaegan", "cvaegan_predicted_class", "telea", "navier_stokes", "mean_fill")
    report = {}
    for kind in ("centre_box", "brush"):
        scores = {k: ([], []) for k in methods}
        holes = []
        for i in range(n):
            x = x_all[i : i + 1]
            m = centre_box_mask(r) if kind == "centre_box" else brush_mask(r, seed=1000 + i)
            holes.append(m.float().mean().item())
            with torch.no_grad():
                guess = int(I.classify(model, torch.where(m, torch.zeros_like(x), x))[0][0])
            outs = {
                "cvaegan": torch.where(m, I.inpaint_tensor(model, x, m, int(y_all[i]), iterations).cpu(), x),
                "cvaegan_predicted_class": torch.where(m, I.inpaint_tensor(model, x, m, guess, iterations).cpu(), x),
                "telea": opencv_inpaint(x, m, "telea"),
                "navier_stokes": opencv_inpaint(x, m, "ns"),
                "mean_fill": mean_fill(x, m),
            }
            for k, out in outs.items():
                p, s = psnr_ssim(out, x, m)
                scores[k][0].append(p.item())
                scores[k][1].append(s.item())
            if bar is not None:
                bar.update(1)
        report[kind] = {
            k: {"psnr_db": round(float(np.mean(p)), 3), "ssim": round(float(np.mean(s)), 4)}
            for k, (p, s) in scores.items()
        }
        report[kind]["hole_fraction"] = round(float(np.mean(holes)), 3)
    report["images"] = n
    report["iterations"] = iterations
    return report


# ---- the whole report --------------------------------------------------------------------------


def check_compatible(model: CVAEGAN, judge: Judge, data: LabelledImages) -> None:
    mc, jc = model.config, judge.config
    if jc.targets:
        raise EvaluationError(
            "this is an attribute judge (it regresses attr_* columns); evaluation needs a class "
            "judge from `cvaegan judge` without --attributes"
        )
    if mc.class_folders and mc.class_folders != data.class_folders:
        raise EvaluationError(
            "the weights were trained on other classes than the data's folders; "
            "pass the data set the weights were trained on"
        )
    if jc.class_folders != data.class_folders:
        raise EvaluationError(
            "the judge was trained on other classes than the data's folders; "
            "train a judge on this data set (`cvaegan judge --data ...`)"
        )


def evaluate(
    model: CVAEGAN,
    judge: Judge,
    data: LabelledImages,
    samples_per_class: int = 8,
    classes: list[int] | None = None,
    inpaint_images: int = 64,
    progress: bool = True,
) -> dict:
    """All figures of the evaluation issue for one generator; `data` at the model's resolution."""
    require_libraries()
    check_compatible(model, judge, data)
    if samples_per_class < 1:
        raise EvaluationError("--samples-per-class must be at least 1")
    k = model.config.num_classes
    classes = list(range(k)) if classes is None else classes
    _, va = split_indices(data.labels, 0.1)
    val = data.subset(va)
    x_val = uint8_to_float(val.images)
    t0 = time.perf_counter()
    n_fake = len(classes) * samples_per_class
    steps = n_fake + 2 * min(inpaint_images, len(val.labels)) + 4
    bar = tqdm(total=steps, desc="evaluate", disable=not progress, dynamic_ncols=True)

    # generated samples: class c, seeds FIRST_SEED + i
    c_fake = torch.tensor(classes).repeat_interleave(samples_per_class)
    z = z_from_seeds([FIRST_SEED + i for i in range(n_fake)], model.config.z_dim)
    fakes = []
    for i in range(0, n_fake, 64):
        fakes.append(I.generate(model, z[i : i + 64], c_fake[i : i + 64], batch_size=64))
        bar.update(len(fakes[-1]))
    x_fake = torch.cat(fakes)

    logits_f, feats_f = predict(judge, x_fake)
    logits_r, feats_r = predict(judge, x_val)
    hits = (logits_f.argmax(1) == c_fake).float().view(len(classes), samples_per_class).mean(1)
    real_top1 = (logits_r.argmax(1) == val.labels).float().mean().item()
    bar.update(1)

    dist = fid_kid(judge, x_val, x_fake)
    pr = prdc_metrics(feats_r, feats_f)
    bar.update(1)
    div_fake = intra_class_diversity(x_fake, c_fake)
    div_real = intra_class_diversity(x_val, val.labels)
    bar.update(1)

    rec_p, rec_s = [], []
    with torch.no_grad():
        for i in range(0, len(x_val), 64):
            xb, cb = x_val[i : i + 64], val.labels[i : i + 64]
            mu, _ = model.encoder.eval()(xb.to(model.device), cb.to(model.device))
            rec = model.generator.eval()(mu, cb.to(model.device)).float().cpu().clamp(-1, 1)
            p, s = psnr_ssim(rec, xb)
            rec_p.append(p)
            rec_s.append(s)
    bar.update(1)
    inpaint = inpainting_scores(model, val, inpaint_images, bar=bar) if inpaint_images > 0 else {}
    bar.close()
    return {
        "format": REPORT_FORMAT,
        "feature_space": "the judge's penultimate layer (not Inception): comparable only between models of this data set",
        "classes": len(classes),
        "chance_top1": round(1 / k, 5),
        "samples_per_class": samples_per_class,
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
        "reconstruction": {
            "psnr_db": round(torch.cat(rec_p).mean().item(), 3),
            "ssim": round(torch.cat(rec_s).mean().item(), 4),
        },
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
