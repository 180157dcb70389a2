"""Turning a training run into a published weights folder: export, latent directions, measured
figures on the held-out split, pictures (samples, per-class thumbnails, loss curves) and the model card."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import inference as I
from .data import LabelledImages, load_images, split_indices
from .hub import load_folder, save_directions
from .images import make_grid, save_png, to_pil, uint8_to_float
from .models import CVAEGAN
from .seeds import z_from_seeds
from .service import thumbnail_sheet
from .train import CHECKPOINT, export_checkpoint, grid_classes

DATASETS = {
    "faces": {
        "title": "faces of 264 people (CelebA + LFW identities)",
        "source": "CelebA (Liu, Luo, Wang, Tang, ICCV 2015) and Labeled Faces in the Wild (Huang, Ramesh, Berg, "
                  "Learned-Miller, 2007; deep-funneled images, Huang et al., NIPS 2012); aligned 128x128 crops",
        "terms": "CelebA: non-commercial research and educational use only; LFW: news photographs, copyright stays "
                 "with their owners. These weights inherit those terms: research / non-commercial use only.",
        "citation": "Z. Liu, P. Luo, X. Wang, X. Tang, \"Deep Learning Face Attributes in the Wild\", ICCV 2015; "
                    "G. B. Huang, M. Ramesh, T. Berg, E. Learned-Miller, \"Labeled Faces in the Wild\", UMass TR 07-49, 2007.",
    },
    "flowers": {
        "title": "Oxford 102 flower species",
        "source": "Oxford 102 Category Flowers (Nilsback and Zisserman, ICVGIP 2008), 128x128 centre crops",
        "terms": "No licence stated by the data set; photos' copyright stays with their owners. Research / "
                 "non-commercial use only.",
        "citation": "M.-E. Nilsback, A. Zisserman, \"Automated flower classification over a large number of "
                    "classes\", ICVGIP 2008.",
    },
    "birds": {
        "title": "100 bird species from CUB-200-2011",
        "source": "Caltech-UCSD Birds-200-2011 (Wah et al., CNS-TR-2011-001), 100-species subset, 128x128",
        "terms": "No licence stated by the data set; Flickr photos, copyright stays with the photographers. "
                 "Research / non-commercial use only.",
        "citation": "C. Wah, S. Branson, P. Welinder, P. Perona, S. Belongie, \"The Caltech-UCSD Birds-200-2011 "
                    "Dataset\", CNS-TR-2011-001, 2011.",
    },
}


@torch.no_grad()
def measure(model: CVAEGAN, val: LabelledImages, samples_per_class: int = 4, first_seed: int = 10_000) -> dict:
    """Figures on held-out real images and on generated samples (C judges both: it is NOT independent)."""
    x = uint8_to_float(val.images)
    pred, _ = I.classify(model, x)
    real_top1 = (pred == val.labels).float().mean().item()
    psnr = []
    for i in range(0, len(x), 64):
        xb, cb = x[i:i + 64].to(model.device), val.labels[i:i + 64].to(model.device)
        mu, _ = model.encoder.eval()(xb, cb)
        rec = model.generator.eval()(mu, cb).float().clamp(-1, 1)
        mse = ((rec - xb) / 2).pow(2).flatten(1).mean(1)
        psnr.append((10 * torch.log10(1 / mse.clamp(min=1e-10))).cpu())
    k = model.config.num_classes
    classes = torch.arange(k).repeat_interleave(samples_per_class)
    seeds = [first_seed + i for i in range(len(classes))]
    gen = I.generate(model, z_from_seeds(seeds, model.config.z_dim), classes, batch_size=64)
    gpred, _ = I.classify(model, gen)
    hits = (gpred == classes).float().view(k, samples_per_class).mean(1)
    return {
        "val_images": len(val.labels),
        "c_top1_real_val": round(real_top1, 4),
        "c_top1_generated": round(hits.mean().item(), 4),
        "c_top1_generated_per_class": [round(v, 4) for v in hits.tolist()],
        "generated_per_class": samples_per_class,
        "recon_psnr_val_db": round(torch.cat(psnr).mean().item(), 2),
        "chance": round(1 / k, 4),
    }


@torch.no_grad()
def measure_inpainting(model: CVAEGAN, val: LabelledImages, iterations=(1, 2, 4, 8), count: int = 64) -> dict:
    """PSNR inside a centre-box hole (a quarter of the image) on held-out images, per iteration count,
    with the true class given: how many encode-generate-paste rounds are worth it."""
    r = model.config.resolution
    m = torch.zeros(1, 1, r, r, dtype=torch.bool)
    m[..., r // 4: 3 * r // 4, r // 4: 3 * r // 4] = True
    x = uint8_to_float(val.images[:count])
    out = {}
    for k in iterations:
        vals = []
        for i in range(len(x)):
            gen = I.inpaint_tensor(model, x[i:i + 1], m, int(val.labels[i]), iterations=k).cpu()
            mse = ((gen - x[i:i + 1]) / 2)[m.expand_as(gen)].pow(2).mean().clamp(min=1e-10)
            vals.append(10 * torch.log10(1 / mse))
        out[str(k)] = round(torch.stack(vals).mean().item(), 2)
    return out


def _luma_box(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> luma (B, h, w) in [0, 1] of the central half (a stand-in for the face box)."""
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] + 1) / 2
    h, w = y.shape[-2:]
    return y[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4]


# Attributes that can be re-measured from pixels alone (the others need a landmark detector).
PIXEL_MEASURES = {
    "attr_brightness": lambda x: _luma_box(x).mean((1, 2)),
    "attr_light_lr": lambda x: (lambda y: y[:, :, y.shape[-1] // 2:].mean((1, 2)) - y[:, :, :y.shape[-1] // 2].mean((1, 2)))(_luma_box(x)),
}


@torch.no_grad()
def check_directions(model: CVAEGAN, amounts: dict[str, float], classes: int = 64, seeds: int = 4,
                     attribute_judge=None) -> dict:
    """Move samples along each direction by -a, 0, +a: how often C still sees the same class, the
    re-measured attribute where it can be measured from pixels, and (with an attribute judge from
    `cvaegan judge --attributes`) every attribute the judge estimates, as means over the samples."""
    from .judge import predict_attributes

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
            row.update(judged_effects(name, row, dict(zip(attribute_judge.config.targets, attribute_judge.config.target_std)), unit))
        out[name] = row
    return out


@torch.no_grad()
def directions_sheet(model: CVAEGAN, amounts: dict[str, float], classes: tuple[int, ...] = (0, 1),
                     seed: int = 20_000, steps: int = 5) -> torch.Tensor:
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


def checkpoint_rows(run: Path) -> tuple[int, list[dict]]:
    """The step of RUN's checkpoint and the metrics.jsonl rows up to it (a run that went on after its last
    checkpoint logged steps that the exported networks never saw)."""
    step = int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["step"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return step, [r for r in rows if r.get("step", 0) <= step]


def loss_curves(rows: list[dict], out: Path, keys=("loss/C", "loss/D", "loss/G_recon", "loss/KL",
                                                    "loss/G_mean_fm_D", "loss/G_mean_fm_C", "acc/C", "psnr/recon")) -> None:
    """Small-multiples PNG of named scalars from metrics.jsonl rows (drawn with PIL: no plotting dependency)."""
    w, h, cols = 300, 160, 4
    nrow = (len(keys) + cols - 1) // cols
    img = Image.new("RGB", (cols * w, nrow * h), "white")
    d = ImageDraw.Draw(img)
    for n, key in enumerate(keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ox, oy = (n % cols) * w, (n // cols) * h
        d.rectangle([ox + 40, oy + 20, ox + w - 10, oy + h - 25], outline="gray")
        d.text((ox + 45, oy + 4), key, fill="black")
        if len(pts) < 2:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1
        d.text((ox + 2, oy + 20), f"{hi:.3g}", fill="black")
        d.text((ox + 2, oy + h - 35), f"{lo:.3g}", fill="black")
        d.text((ox + w - 60, oy + h - 20), f"{xs[-1]} st", fill="black")
        sx = (w - 52) / max(1, xs[-1] - xs[0])
        sy = (h - 47) / (hi - lo)
        line = [(ox + 41 + (x - xs[0]) * sx, oy + h - 26 - (y - lo) * sy) for x, y in pts]
        d.line(line, fill=(200, 40, 40), width=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def _wall_time(rows: list[dict]) -> float:
    """Training seconds from metrics.jsonl: each row's time/step_s times the steps since the previous row."""
    total, prev = 0.0, 0
    for r in rows:
        total += r.get("time/step_s", 0.0) * (r["step"] - prev)
        prev = r["step"]
    return total


def model_card(name: str, model: CVAEGAN, run_cfg: dict, figures: dict, wall_s: float, hardware: str, notes: str) -> str:
    info = DATASETS.get(name, {"title": name, "source": "", "terms": "", "citation": ""})
    c = model.config
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in model.networks().items()}
    t = run_cfg
    return f"""---
library_name: cvaegan
license: other
tags:
- cvae-gan
- image-generation
---
# CVAE-GAN weights: {info['title']}

Generator, encoder and classifier of [CVAE-GAN](https://arxiv.org/abs/1703.10155) (Bao et al., ICCV 2017)
trained with the `cvaegan` package. All pictures below were generated by this model.

| | |
|---|---|
| data | {info['source']} |
| classes | {c.num_classes} |
| resolution | {c.resolution}x{c.resolution} |
| z dim | {c.z_dim} |
| widths | base {c.base_channels}, max {c.max_channels} channels |
| parameters | E {params['encoder'] / 1e6:.2f} M, G {params['generator'] / 1e6:.2f} M, C {params['classifier'] / 1e6:.2f} M (stored as float16) |
| steps x batch | {figures.get('steps')} x {t.get('batch_size')} |
| optimiser | Adam lr {t.get('lr')}, betas {tuple(t.get('betas', ()))}; lambdas {t.get('lambda1')}, {t.get('lambda2')}, {t.get('lambda3')}, {t.get('lambda4')}; running-mean momentum {t.get('momentum')} |
| options | DiffAugment: {t.get('diffaugment') or 'off'}; EMA of G: {t.get('ema_decay') or 'off'}; shipped generator: {figures.get('generator', 'G')} |
| hardware | {hardware} |
| wall time | {wall_s / 3600:.2f} h of training |
| latent directions | {', '.join(c.directions) if c.directions else 'none'} |

## Measured on {figures['val_images']} real images: {figures['split']}, about 10% of each class

| figure | value |
|---|---|
| C's top-1 on held-out real images | {figures['c_top1_real_val']:.1%} |
| C's top-1 on generated samples ({figures['generated_per_class']} per class, all classes) | {figures['c_top1_generated']:.1%} |
| chance | {figures['chance']:.2%} |
| mean reconstruction PSNR (E then G, held-out images) | {figures['recon_psnr_val_db']:.2f} dB |
| inpainting PSNR inside a centre hole (1/4 of the image), by iterations | {', '.join(f"{k}: {v:.2f} dB" for k, v in figures.get('inpaint_psnr_by_iterations', {}).items())} |

C is the model's own classifier, trained with it: it is **not** an independent judge, so its score on
generated samples flatters the model. The independent judge's figures follow.

<!-- judge:start -->
(not measured yet: `cvaegan evaluate --weights THIS_FOLDER --judge JUDGE --data DATA --out report.json --card`)
<!-- judge:end -->

{notes}

![samples](samples.png)

Rows: classes spread over the class list; columns: seeds 0-7. Loss curves: ![losses](loss_curves.png)

## Terms
{info['terms']}

## Citation
Bao, Chen, Wen, Li, Hua, "CVAE-GAN: Fine-Grained Image Generation through Asymmetric Training", ICCV 2017.
Data: {info['citation']}
"""


def write_examples(model: CVAEGAN, name: str, out: str | os.PathLike, count: int = 3) -> list[Path]:
    """Generated example photos + masks for the app's Inpaint tab: OUT/<name>_<i>_image.png and _mask.png
    (mask: opaque white = fill in; a centre box, a horizontal band, a diagonal stroke)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = model.config.resolution
    classes = grid_classes(model.config.num_classes, count)
    paths = []
    for i, c in enumerate(classes):
        img = I.sample(model, c, [100 + i], truncation=0.8)[0]
        mask = Image.new("RGBA", (r, r), (0, 0, 0, 0))
        d = ImageDraw.Draw(mask)
        white = (255, 255, 255, 255)
        if i % 3 == 0:
            d.rectangle([r // 3, r // 3, 2 * r // 3, 2 * r // 3], fill=white)
        elif i % 3 == 1:
            d.rectangle([0, r // 2 - r // 10, r, r // 2 + r // 10], fill=white)
        else:
            d.line([(r // 5, r // 5), (4 * r // 5, 4 * r // 5)], fill=white, width=max(3, r // 10))
        base = out / f"{name}_{i}"
        save_png(to_pil(img), f"{base}_image.png")
        mask.save(f"{base}_mask.png")
        paths.append(Path(f"{base}_image.png"))
    return paths


def _short(attr: str) -> str:
    return attr.removeprefix("attr_").replace("_", " ")


def _judge_words(cfg: dict) -> str:
    t = cfg.get("training", {})
    r2 = ", ".join(f"{_short(k)} {v:.2f}" for k, v in t.get("val_r2", {}).items())
    return (f"`cvaegan judge --attributes`: {cfg.get('resolution')} px, {t.get('epochs')} epochs, seed "
            f"{t.get('seed')}, trained on real training photos only; R^2 on the held-out photos: {r2}")


def _samples(checks: dict) -> str:
    n = next(iter(checks.values())).get("samples")
    return f"{n:,}" if n else "the"


def directions_table(checks: dict, attribute_judge: dict | None = None, fits: dict | None = None,
                     direction_judge: dict | None = None) -> str:
    """Markdown table of check_directions' results for the model card. attribute_judge / direction_judge:
    the configs (as dicts) of the judge that re-measured the directions / that fitted them; fits: what
    compute_directions returned."""
    if not checks:
        return ""
    judged = attribute_judge is not None and any("judged" in r for r in checks.values())
    same = _same_judge(direction_judge, attribute_judge)
    fits = fits or {}
    if direction_judge is not None and fits:
        n = next(iter(fits.values()))["n"]
        fit_r2 = ", ".join(f"{_short(k)} {f['r2']:.2f}" for k, f in fits.items())
        how = (f"`attr_*` directions are ridge regressions of the attribute, as an attribute judge ({_judge_words(direction_judge)}) "
               f"estimates it on {n:,} generated samples, on their z (z from the prior, classes drawn at random; "
               f"R^2 of these linear fits: {fit_r2})")
    else:
        how = "`attr_*` directions are ridge regressions of the attribute on E's codes of the training photos"
    if any(f.get("decorrelated") for f in fits.values()):
        how += (", each then made orthogonal to the other attributes' regression weights so that it leaves them "
                "unchanged to first order (conditional editing as in InterFaceGAN, Shen et al. 2020)")
    lines = [DIRECTIONS_HEADING,
             f"Principal components (of E's codes) move z by standard deviations; {how}. An `attr_*` slider's unit is "
             "one standard deviation of the attribute over the real photos. The table moves every direction by "
             "+-2 units. "
             "'C keeps class' is how often C still assigns the generated sample to its class after the move "
             f"(identity kept; C is not independent; over {_samples(checks)} samples, so a few points either way "
             "are noise). 'Pixels' re-measures brightness (mean luma of the central "
             "square) and left/right lighting (right minus left half) directly."]
    if judged:
        if direction_judge is None:
            whose = "an independent attribute judge"
        elif same:
            whose = "the same attribute judge that fitted the directions (so this check is NOT independent of the fit)"
        else:
            whose = "a second attribute judge, trained separately with another seed"
        lines.append(
            "The other columns are re-measured on generated samples"
            + (" (other seeds than the fit used)" if direction_judge is not None else "")
            + f", by {whose} ({_judge_words(attribute_judge)})"
            + ("; it shares the architecture and the photos with the fitting judge, so the check is only partly "
               "independent. " if direction_judge is not None and not same else ". ") +
            "'Measured per unit' is the judged change of the direction's "
            "own attribute per slider unit (1.00 = exactly as intended, 0 = no effect); 'largest side effect' is "
            "the other attribute that moved most, both from -a to +a in standard deviations of the real photos.")
    lines.append("\n\n![directions](directions.png)\n\n`directions.png`: two rows per direction (the table's order; two "
                 "classes, one seed), columns from -a to +a; the middle column is the unedited sample.\n")
    if judged:
        lines += ["| direction | amounts | C keeps class at -a / 0 / +a | pixels at -a / 0 / +a | measured per unit "
                  "(own attribute, change in SD) | largest side effect (SD) |", "|---|---|---|---|---|---|"]
    else:
        lines += ["| direction | amounts | C keeps class at -a / 0 / +a | pixels at -a / 0 / +a |", "|---|---|---|---|"]
    for name, r in checks.items():
        a = r["amounts"][2]
        kept = " / ".join(f"{v:.0%}" for v in r["class_kept"])
        meas = " / ".join(f"{v:.3f}" for v in r["measured"]) if r["measured"] else "n/a"
        row = f"| {name} | +-{a:g} | {kept} | {meas} |"
        if judged:
            own = (f"{r['per_unit']:.2f} ({r['change_sd'][name]:+.2f} SD)" if "per_unit" in r
                   else "n/a (principal component)")
            other = f"{_short(r['largest_other'][0])} {r['largest_other'][1]:+.2f}" if "largest_other" in r else "n/a"
            row += f" {own} | {other} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _same_judge(a: dict | None, b: dict | None) -> bool:
    """Whether two judge configs (as dicts) describe the same judge (same training record: settings, seed, figures)."""
    return a is not None and b is not None and a.get("training", {}) == b.get("training", {})


def fit_and_check_directions(model: CVAEGAN, out: Path, train_set: LabelledImages, components: int = 8,
                             fit_judge=None, attr_judge=None, decorrelate: bool = False,
                             judge_samples: int = 4096) -> tuple[dict, str]:
    """Fit and save the latent directions into the weights folder OUT, re-measure them (check_directions,
    with attr_judge when given), draw directions.png. Returns (figures to record, the card's section)."""
    import dataclasses

    fits = I.compute_directions(model, train_set.images, train_set.labels, components, train_set.attributes,
                                judge=fit_judge, judge_samples=judge_samples, decorrelate=decorrelate)
    save_directions(model, out)
    fit_cfg = None if fit_judge is None else dataclasses.asdict(fit_judge.config)
    attr_cfg = None if attr_judge is None else dataclasses.asdict(attr_judge.config)
    figures = {"direction_fits": fits}
    if fit_judge is not None:
        figures["direction_judge"] = {"resolution": fit_judge.config.resolution, **fit_judge.config.training,
                                      "same_as_attribute_judge": _same_judge(fit_cfg, attr_cfg)}
    amounts = {n: 2.0 for n in model.config.directions}  # 2 standard deviations: every unit is "std" now
    figures["directions"] = check_directions(model, amounts, attribute_judge=attr_judge)
    if attr_judge is not None:
        figures["attribute_judge"] = {"resolution": attr_judge.config.resolution, **attr_judge.config.training}
    save_png(make_grid(directions_sheet(model, amounts), ncol=5), out / "directions.png")
    return figures, directions_table(figures["directions"], attr_cfg, fits, fit_cfg)


DIRECTIONS_HEADING = "\n## Latent directions (the app's sliders)\n"


def refresh_directions(folder: str | os.PathLike, data_path: str | os.PathLike, components: int = 8,
                       attribute_judge: str | os.PathLike | None = None,
                       direction_judge: str | os.PathLike | None = None, decorrelate: bool = False,
                       device: str = "cpu", judge_samples: int = 4096) -> dict:
    """Re-fit and re-check the latent directions of a released weights folder without retraining:
    directions.safetensors, config.json, directions.png, figures.json and the card's directions section
    are replaced; the networks and every other figure stay as they are."""
    from .judge import load_attribute_judge

    folder = Path(folder)
    attr_judge = load_attribute_judge(attribute_judge, device) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge, device) if direction_judge is not None else None
    model = load_folder(folder, device)
    data = load_images(data_path, model.config.resolution)
    if data.class_folders != model.config.class_folders:
        raise ValueError(f"{data_path} has other classes than the weights in {folder}; use the training data")
    fig_path, card_path = folder / "figures.json", folder / "README.md"
    figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
    held_out = figures.get("split") == "held-out"  # then the directions use the training part only, as in release
    train_set = data.subset(split_indices(data.labels, 0.1, seed=1234)[0]) if held_out else data
    dir_figures, table = fit_and_check_directions(model, folder, train_set, components, fit_judge, attr_judge,
                                                  decorrelate, judge_samples)
    for key in ("direction_fits", "direction_judge", "attribute_judge"):
        figures.pop(key, None)
    figures.update(dir_figures)
    fig_path.write_text(json.dumps(figures, indent=1) + "\n")
    if card_path.is_file():
        card = card_path.read_text()
        cut = card.find(DIRECTIONS_HEADING)
        card_path.write_text((card if cut < 0 else card[:cut]).rstrip("\n") + "\n" + table)
    return dir_figures


def release(run: str | os.PathLike, out: str | os.PathLike, data_path: str | os.PathLike, name: str,
            hardware: str | None = None, notes: str = "", components: int = 8,
            examples: str | os.PathLike | None = None, use_ema: bool = True,
            attribute_judge: str | os.PathLike | None = None,
            direction_judge: str | os.PathLike | None = None, decorrelate: bool = False) -> dict:
    """Export RUN's checkpoint into OUT and add directions, figures, pictures and the model card.
    attribute_judge: a folder from `cvaegan judge --attributes` that re-measures every direction;
    direction_judge: one whose estimates on generated samples fit the attr_* directions (default: fit
    them on E's codes of the training photos); decorrelate: see inference.compute_directions."""
    from .judge import load_attribute_judge

    run, out = Path(run), Path(out)
    if not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run / CHECKPOINT} not found")
    attr_judge = load_attribute_judge(attribute_judge) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge) if direction_judge is not None else None
    export_checkpoint(run, out, use_ema=use_ema)
    model = load_folder(out)
    data = load_images(data_path, model.config.resolution)
    if data.class_folders != model.config.class_folders:
        raise ValueError(f"{data_path} does not hold the classes this run was trained on")
    run_cfg = json.loads((run / "train_config.json").read_text())
    held_out = (run_cfg.get("val_fraction") or 0) > 0
    train_idx, val_idx = split_indices(data.labels, run_cfg["val_fraction"] if held_out else 0.1, seed=1234)
    train_set = data.subset(train_idx) if held_out else data
    figures = measure(model, data.subset(val_idx))
    figures["inpaint_psnr_by_iterations"] = measure_inpainting(model, data.subset(val_idx))
    dir_figures, table = fit_and_check_directions(model, out, train_set, components, fit_judge, attr_judge,
                                                  decorrelate)
    figures.update(dir_figures)
    state_step, rows = checkpoint_rows(run)
    figures["steps"] = state_step
    figures["generator"] = "EMA of G" if use_ema and run_cfg.get("ema_decay") else "G (no EMA)"
    figures["split"] = "held-out" if held_out else "training images (the run kept no held-out split)"
    classes = grid_classes(model.config.num_classes, 8)
    grid = torch.cat([I.sample(model, c, list(range(8))) for c in classes])
    save_png(make_grid(grid, ncol=8), out / "samples.png")
    save_png(thumbnail_sheet(model), out / "thumbnails.png")
    loss_curves(rows, out / "loss_curves.png")
    hw = hardware or f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    (out / "README.md").write_text(model_card(name, model, run_cfg, figures, _wall_time(rows), hw, notes) + table)
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    if examples is not None:
        write_examples(model, name, examples)
    return figures


JUDGE_START, JUDGE_END = "<!-- judge:start -->", "<!-- judge:end -->"
OLD_JUDGE_LINE = "An independent judge's figures will be added by the evaluation work."


def judge_section(report: dict, judge_cfg: dict) -> str:
    """Markdown for a model card: the figures of `cvaegan evaluate` (an independent judge)."""
    d, t = report["discriminability"], judge_cfg.get("training", {})
    inp = report["inpainting"]
    rows = "\n".join(
        f"| inpainting, {kind.replace('_', ' ')} ({inp[kind]['hole_fraction']:.0%} of the pixels), PSNR / SSIM inside the hole "
        f"| ours {inp[kind]['cvaegan']['psnr_db']:.2f} dB / {inp[kind]['cvaegan']['ssim']:.3f} (true class), "
        f"{inp[kind]['cvaegan_predicted_class']['psnr_db']:.2f} dB (C's guess); Telea {inp[kind]['telea']['psnr_db']:.2f} dB / "
        f"{inp[kind]['telea']['ssim']:.3f}; Navier-Stokes {inp[kind]['navier_stokes']['psnr_db']:.2f} dB; mean colour "
        f"{inp[kind]['mean_fill']['psnr_db']:.2f} dB |" for kind in ("centre_box", "brush"))
    return f"""### Independent judge (`cvaegan evaluate`)

The judge is a separate classifier (residual net, GroupNorm; {judge_cfg.get('resolution')} px input; {t.get('epochs')}
epochs; seed {t.get('seed')}) trained on real training photos only. Distribution figures use the judge's
features, so they compare models of this data set only (not Inception FID).

| figure | value |
|---|---|
| judge top-1 on held-out real photos | {d['judge_top1_real_val']:.1%} |
| judge top-1 on generated samples ({report['samples_per_class']} per class, {report['classes']} classes) | {d['judge_top1_generated']:.1%} (chance {report['chance_top1']:.2%}) |
| inception score from the judge's logits: samples / held-out real | {report['inception_score_judge']['generated']['mean']:.2f} / {report['inception_score_judge']['real_val']['mean']:.2f} |
| FID / KID in the judge's feature space | {report['fid_judge']:.2f} / {report['kid_judge']['mean']:.4f} |
| precision / recall / density / coverage (judge features, k = {report['prdc_judge']['nearest_k']}) | {report['prdc_judge']['precision']:.3f} / {report['prdc_judge']['recall']:.3f} / {report['prdc_judge']['density']:.3f} / {report['prdc_judge']['coverage']:.3f} |
| intra-class diversity, 1 - MS-SSIM: samples / held-out real | {report['intra_class_diversity']['generated']:.3f} / {report['intra_class_diversity']['real_val']:.3f} |
| reconstruction PSNR / SSIM (held-out photos) | {report['reconstruction']['psnr_db']:.2f} dB / {report['reconstruction']['ssim']:.3f} |
{rows}
"""


def attach_judge(folder: str | os.PathLike, report: dict, judge_cfg: dict) -> Path:
    """Write evaluation.json into a weights folder and the judge's section into its model card."""
    folder = Path(folder)
    (folder / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
    card = folder / "README.md"
    if not card.is_file():
        return folder
    text = card.read_text(encoding="utf-8")
    block = f"{JUDGE_START}\n{judge_section(report, judge_cfg)}{JUDGE_END}"
    if JUDGE_START in text and JUDGE_END in text:
        a, b = text.index(JUDGE_START), text.index(JUDGE_END) + len(JUDGE_END)
        text = text[:a] + block + text[b:]
    elif OLD_JUDGE_LINE in text:
        text = text.replace(OLD_JUDGE_LINE, "The independent judge's figures follow.\n\n" + block)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card.write_text(text, encoding="utf-8")
    return folder
