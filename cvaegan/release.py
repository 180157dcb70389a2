"""Turning a training run into a published weights folder: export, latent directions, figures measured
on the held-out split, pictures and the model card (card.py writes it)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import inference as I
from .card import directions_table, loss_curves, model_card, replace_directions_section, same_judge, thumbnail_sheet
from .data import LabelledImages, load_images, split_indices
from .directions import check_directions, compute_directions, directions_sheet
from .errors import InputError
from .hub import load_folder
from .images import make_grid, psnr, save_png, to_pil, uint8_to_float
from .judge import load_attribute_judge
from .models import CVAEGAN
from .seeds import z_from_seeds
from .train import CHECKPOINT, export_checkpoint, grid_classes


@torch.no_grad()
def measure(model: CVAEGAN, val: LabelledImages, samples_per_class: int = 4, first_seed: int = 10_000) -> dict:
    """Figures on held-out real images and on generated samples (C judges both: it is NOT independent)."""
    x = uint8_to_float(val.images)
    pred, _ = I.classify(model, x)
    real_top1 = (pred == val.labels).float().mean().item()
    db = []
    for i in range(0, len(x), 64):
        xb, cb = x[i : i + 64].to(model.device), val.labels[i : i + 64].to(model.device)
        mu, _ = model.encoder.eval()(xb, cb)
        rec = model.generator.eval()(mu, cb).float().clamp(-1, 1)
        db.append(psnr(rec, xb).cpu())
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
        "recon_psnr_val_db": round(torch.cat(db).mean().item(), 2),
        "chance": round(1 / k, 4),
    }


@torch.no_grad()
def measure_inpainting(model: CVAEGAN, val: LabelledImages, iterations=(1, 2, 4, 8), count: int = 64) -> dict:
    """PSNR inside a centre-box hole (a quarter of the image) on held-out images, per iteration count,
    with the true class given: how many encode-generate-paste rounds are worth it."""
    r = model.config.resolution
    m = torch.zeros(1, 1, r, r, dtype=torch.bool)
    m[..., r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = True
    x = uint8_to_float(val.images[:count])
    out = {}
    for k in iterations:
        vals = []
        for i in range(len(x)):
            gen = I.inpaint_tensor(model, x[i : i + 1], m, int(val.labels[i]), iterations=k).cpu()
            vals.append(psnr(gen, x[i : i + 1], m)[0])
        out[str(k)] = round(torch.stack(vals).mean().item(), 2)
    return out


def checkpoint_rows(run: Path) -> tuple[int, list[dict]]:
    """The step of RUN's checkpoint and the metrics.jsonl rows up to it (a run that went on after its last
    checkpoint logged steps that the exported networks never saw)."""
    step = int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["step"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return step, [r for r in rows if r.get("step", 0) <= step]


def _wall_time(rows: list[dict]) -> float:
    """Training seconds from metrics.jsonl: each row's time/step_s times the steps since the previous row."""
    total, prev = 0.0, 0
    for r in rows:
        total += r.get("time/step_s", 0.0) * (r["step"] - prev)
        prev = r["step"]
    return total


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


def fit_and_check_directions(
    model: CVAEGAN,
    out: Path,
    train_set: LabelledImages,
    components: int = 8,
    fit_judge=None,
    attr_judge=None,
    decorrelate: bool = False,
    judge_samples: int = 4096,
) -> tuple[dict, str]:
    """Fit and save the latent directions into the weights folder OUT, re-measure them (check_directions,
    with attr_judge when given), draw directions.png. Returns (figures to record, the card's section)."""
    fits = compute_directions(
        model,
        train_set.images,
        train_set.labels,
        components,
        train_set.attributes,
        judge=fit_judge,
        judge_samples=judge_samples,
        decorrelate=decorrelate,
    )
    model.save_directions(out)
    fit_cfg = None if fit_judge is None else dataclasses.asdict(fit_judge.config)
    attr_cfg = None if attr_judge is None else dataclasses.asdict(attr_judge.config)
    figures = {"direction_fits": fits}
    if fit_judge is not None:
        figures["direction_judge"] = {
            "resolution": fit_judge.config.resolution,
            **fit_judge.config.training,
            "same_as_attribute_judge": same_judge(fit_cfg, attr_cfg),
        }
    amounts = {n: 2.0 for n in model.config.directions}  # 2 standard deviations: every unit is "std" now
    figures["directions"] = check_directions(model, amounts, attribute_judge=attr_judge)
    if attr_judge is not None:
        figures["attribute_judge"] = {"resolution": attr_judge.config.resolution, **attr_judge.config.training}
    save_png(make_grid(directions_sheet(model, amounts), ncol=5), out / "directions.png")
    return figures, directions_table(figures["directions"], attr_cfg, fits, fit_cfg)


def refresh_directions(
    folder: str | os.PathLike,
    data_path: str | os.PathLike,
    components: int = 8,
    attribute_judge: str | os.PathLike | None = None,
    direction_judge: str | os.PathLike | None = None,
    decorrelate: bool = False,
    device: str = "cpu",
    judge_samples: int = 4096,
) -> dict:
    """Re-fit and re-check the latent directions of a released weights folder without retraining:
    directions.safetensors, config.json, directions.png, figures.json and the card's directions section
    are replaced; the networks and every other figure stay as they are."""
    folder = Path(folder)
    attr_judge = load_attribute_judge(attribute_judge, device) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge, device) if direction_judge is not None else None
    model = load_folder(folder, device)
    data = load_images(data_path, model.config.resolution)
    if data.class_folders != model.config.class_folders:
        raise InputError(f"{data_path} has other classes than the weights in {folder}; use the training data")
    fig_path, card_path = folder / "figures.json", folder / "README.md"
    figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
    held_out = figures.get("split") == "held-out"  # then the directions use the training part only, as in release
    train_set = data.subset(split_indices(data.labels, 0.1)[0]) if held_out else data
    dir_figures, table = fit_and_check_directions(
        model, folder, train_set, components, fit_judge, attr_judge, decorrelate, judge_samples
    )
    for key in ("direction_fits", "direction_judge", "attribute_judge"):
        figures.pop(key, None)
    figures.update(dir_figures)
    fig_path.write_text(json.dumps(figures, indent=1) + "\n")
    if card_path.is_file():
        replace_directions_section(card_path, table)
    return dir_figures


def release(
    run: str | os.PathLike,
    out: str | os.PathLike,
    data_path: str | os.PathLike,
    name: str,
    hardware: str | None = None,
    notes: str = "",
    components: int = 8,
    examples: str | os.PathLike | None = None,
    use_ema: bool = True,
    attribute_judge: str | os.PathLike | None = None,
    direction_judge: str | os.PathLike | None = None,
    decorrelate: bool = False,
) -> dict:
    """Export RUN's checkpoint into OUT and add directions, figures, pictures and the model card.
    attribute_judge: a folder from `cvaegan judge --attributes` that re-measures every direction;
    direction_judge: one whose estimates on generated samples fit the attr_* directions (default: fit
    them on E's codes of the training photos); decorrelate: see directions.compute_directions."""
    run, out = Path(run), Path(out)
    if not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run / CHECKPOINT} not found")
    attr_judge = load_attribute_judge(attribute_judge) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge) if direction_judge is not None else None
    export_checkpoint(run, out, use_ema=use_ema)
    model = load_folder(out)
    data = load_images(data_path, model.config.resolution)
    if data.class_folders != model.config.class_folders:
        raise InputError(f"{data_path} does not hold the classes this run was trained on")
    run_cfg = json.loads((run / "train_config.json").read_text())
    held_out = (run_cfg.get("val_fraction") or 0) > 0
    train_idx, val_idx = split_indices(data.labels, run_cfg["val_fraction"] if held_out else 0.1)
    train_set = data.subset(train_idx) if held_out else data
    figures = measure(model, data.subset(val_idx))
    figures["inpaint_psnr_by_iterations"] = measure_inpainting(model, data.subset(val_idx))
    dir_figures, table = fit_and_check_directions(model, out, train_set, components, fit_judge, attr_judge, decorrelate)
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
