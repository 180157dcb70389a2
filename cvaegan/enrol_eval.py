"""Enrolment measured on classes the model never saw, with the independent judge.

    python -m cvaegan.experiments enrolment --weights W --data D --judge J --out DIR [--write-readme]

The weights are trained with `--exclude-classes a,b,...`; the judge (`cvaegan judge`, real photos of every
class of D) knows those classes. Classes are matched between model, judge and data by class folder name,
never by index. For each held-out class:
- a few of its photos (a seeded pick) are enrolled with cvaegan.enrol.enrol, timed (wall and process CPU
  seconds, torch threads);
- samples of the enrolled class (fixed seeds) are shown to the judge: top-1 = the judge's argmax is that class;
- baseline: the trained class enrolment started from (C's nearest class to the photos), not enrolled,
  with the same seeds: how often the judge takes its samples for the held-out class.
Reference: the judge's top-1 on samples of a seeded pick of trained classes, with the same seeds.

Outputs in DIR: classes/<folder>.json (one per held-out class, so a killed run resumes where it stopped),
classes/<folder>.safetensors (the enrolled class file), classes/<folder>.png (its block of the sheet),
reference.json, enrolment.json (everything), enrolment.md (the table) and enrolment_sheet.png: per held-out
class, E->G reconstructions of its enrolment photos through the enrolled class (model output, not the
photos), samples of the nearest trained class before enrolment, and samples of the enrolled class.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from . import __version__
from .data import IMAGE_EXTENSIONS, _list_directory
from .enrol import (
    DEFAULT_LAMBDAS,
    DEFAULT_STEPS,
    LAYER_LR,
    MAX_PHOTOS,
    MIN_PHOTOS,
    add_classes,
    check_lambdas,
    check_layer_lr,
    enrol,
    load_photos,
    save_classes,
)
from .errors import InputError
from .evaluate import intra_class_diversity
from .images import to_pil
from .inference import sample
from .judge import Judge, load_judge, predict
from .speed import cpu_name

SAMPLE_SEEDS = 50_000  # samples use seeds SAMPLE_SEEDS, SAMPLE_SEEDS + 1, ... for every class alike
SHEET_SAMPLES = 8  # samples per row of the sheet
TARGET_RATIO = 0.5  # enrolled classes' mean judge top-1 >= this x the trained classes'
TARGET_SECONDS = 60.0  # enrolment of TARGET_PHOTOS photos, wall seconds on 2 CPU cores
TARGET_PHOTOS = 5
DIVERSITY_SAMPLES = 32  # samples per class in the diversity figure (496 pairs; 100 samples would be 4,950)
BATCH = 32  # generation batch (eval mode: samples do not depend on their batch-mates)


class EnrolmentExperimentError(InputError):
    """Arguments the enrolment experiment cannot use; the message says why and what to do."""


# ------------------------------------------------------------------ inputs


def recorded_exclusions(weights: str | os.PathLike) -> list[str] | None:
    """The class folders left out of training, as the run recorded them (train_config.json's exclude_classes),
    or None when nothing is recorded. Looked up in the weights folder, and in the run folder when the weights
    are a run's export/ (what `cvaegan train` writes); the export's config.json does not record them."""
    folder = Path(weights)
    candidates = [folder / "train_config.json"]
    if folder.is_dir() and (folder.parent / "export").resolve() == folder.resolve():
        candidates.append(folder.parent / "train_config.json")
    for path in candidates:
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("exclude_classes") or ""
            found = [f.strip() for f in value.split(",") if f.strip()]
            return found or None
    return None


class PhotoSource:
    """The data set's image files by class folder (ImageFolder directory or uncompressed tar), read on demand:
    only the photos picked for enrolment are ever read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.by_class: dict[str, list[str]] = {}
        self._members: dict[str, str] = {}  # path as shown -> tar member name
        if not self.path.exists():
            raise EnrolmentExperimentError(f"--data {self.path} does not exist; pass the folder or .tar trained on")
        if self.path.is_dir():
            for member, folder in _list_directory(self.path):
                self.by_class.setdefault(folder, []).append(member)
        elif tarfile.is_tarfile(self.path):
            with tarfile.open(self.path, mode="r:") as tf:
                for m in tf.getmembers():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    parts = Path(name).parts
                    if m.isfile() and name.lower().endswith(IMAGE_EXTENSIONS) and len(parts) >= 2:
                        self.by_class.setdefault(parts[0], []).append(name)
                        self._members[name] = m.name
            for files in self.by_class.values():
                files.sort()
        else:
            raise EnrolmentExperimentError(f"--data {self.path} is neither a folder nor an uncompressed tar")

    def read(self, members: list[str]) -> list[bytes]:
        if self.path.is_dir():
            return [(self.path / m).read_bytes() for m in members]
        with tarfile.open(self.path, mode="r:") as tf:
            return [tf.extractfile(self._members[m]).read() for m in members]


def pick_photos(files: list[str], count: int, seed: int, folder: str) -> list[str]:
    """A seeded choice of `count` of a class's files (the same for the same seed and class, whatever else
    the data holds), in file order."""
    rng = np.random.default_rng([seed, zlib.crc32(folder.encode("utf-8"))])
    return [files[i] for i in sorted(rng.choice(len(files), count, replace=False).tolist())]


def pick_trained(candidates: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 1])
    if count >= len(candidates):
        return list(candidates)
    return [candidates[i] for i in sorted(rng.choice(len(candidates), count, replace=False).tolist())]


def check_classes(
    classes: list[str], model_folders: list[str], judge_folders: list[str], source: PhotoSource, photos: int
) -> None:
    """EnrolmentExperimentError for a class the data lacks, the judge does not know, the model already has,
    or that has fewer photos than are to be enrolled."""
    if not classes:
        raise EnrolmentExperimentError("no classes to enrol; pass --classes a,b,...")
    if len(set(classes)) != len(classes):
        raise EnrolmentExperimentError(f"--classes names a class twice: {classes}")
    unknown = [c for c in classes if c not in source.by_class]
    if unknown:
        shown = ", ".join(sorted(source.by_class)[:5])
        raise EnrolmentExperimentError(
            f"unknown class folder(s) {unknown} in {source.path.name} (it has {len(source.by_class)} class folders, "
            f"e.g. {shown}); give class folder names"
        )
    trained = [c for c in classes if c in model_folders]
    if trained:
        raise EnrolmentExperimentError(
            f"the model already has class(es) {trained}: enrolment is measured on classes left out of training "
            "(train with --exclude-classes)"
        )
    unjudged = [c for c in classes if c not in judge_folders]
    if unjudged:
        raise EnrolmentExperimentError(
            f"the judge does not know class(es) {unjudged}; use a judge trained on every class of the data"
        )
    few = {c: len(source.by_class[c]) for c in classes if len(source.by_class[c]) < photos}
    if few:
        raise EnrolmentExperimentError(
            f"class(es) with fewer than --photos {photos} photos: {few}; lower --photos or choose other classes"
        )


# ------------------------------------------------------------------ measuring


def judge_share(judge: Judge, x: torch.Tensor, judge_class: int) -> float:
    """The share of images whose judge argmax is `judge_class`."""
    logits, _ = predict(judge, x)
    return round((logits.argmax(1) == judge_class).float().mean().item(), 4)


def diversity(x: torch.Tensor) -> float:
    """Variety of one class's samples: 1 - mean pairwise MS-SSIM over its first DIVERSITY_SAMPLES samples, the
    project's intra-class diversity (as in the model cards and the budget runs). One image repeated gives 0; a
    class drawn the same way over and over (a per-class term that collapsed the samples onto its photos) shows
    as a fall against the trained classes."""
    x = x[:DIVERSITY_SAMPLES]
    return round(intra_class_diversity(x, torch.zeros(len(x), dtype=torch.int64)), 4)


def machine() -> dict:
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cvaegan": __version__,
        "load_average_1_5_15_min": load,
    }


@torch.no_grad()
def _reconstructions(model, photos: torch.Tensor, cls: int) -> torch.Tensor:
    model.encoder.eval()
    model.generator.eval()
    c = torch.full((len(photos),), cls, device=model.device)
    mu, _ = model.encoder(photos.to(model.device), c)
    return model.generator(mu, c).float().cpu()


def _safe(folder: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", folder)


def measure_class(
    model,
    judge: Judge,
    source: PhotoSource,
    folder: str,
    photos: int,
    seeds: list[int],
    seed: int,
    steps: int,
    lambdas: tuple[float, float, float, float] = DEFAULT_LAMBDAS,
    layer_lr: float = LAYER_LR,
) -> tuple[dict, Image.Image]:
    """Enrol one held-out class and judge it against its baseline -> (result, its block of the sheet)."""
    cfg = model.config
    jidx = {f: i for i, f in enumerate(judge.config.class_folders)}
    chosen = pick_photos(source.by_class[folder], photos, seed, folder)
    raw = source.read(chosen)
    name = folder if not folder.lstrip("-").isdigit() else f"held-out {folder}"
    threads = torch.get_num_threads()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    cls = enrol(model, raw, name, steps=steps, seed=seed, lambdas=lambdas, layer_lr=layer_lr)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    base = cfg.class_index(cls.info["init_from"])  # the class enrolment started from: C's nearest to the photos
    base_folder = cfg.class_folders[base]
    grown = copy.deepcopy(model)
    (new,) = add_classes(grown, cls)
    enrolled = sample(grown, new, seeds, batch_size=BATCH)
    near = sample(grown, new, seeds, batch_size=BATCH, prior="photos")  # z from the photos' codes (an option)
    before = sample(model, base, seeds, batch_size=BATCH)
    recon = _reconstructions(grown, load_photos(raw, cfg.resolution), new)
    info = cls.info
    result = {
        "folder": folder,
        "photos": chosen,
        "enrol": {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "threads": threads,
            "steps": steps,
            "seed": seed,
            "lambdas": list(lambdas),
            "layer_lr": layer_lr,
            "discriminator": info["discriminator"],
            "recon_psnr_db_before": info["recon_psnr_db_before"],
            "recon_psnr_db_after": info["recon_psnr_db_after"],
            "c_top1_photos": info["c_top1_photos"],
            "c_top1_samples": info["c_top1_samples"],
            "init_probability": info["init_probability"],
        },
        "nearest_trained": base_folder,
        "judge_top1_enrolled": judge_share(judge, enrolled, jidx[folder]),
        "judge_top1_enrolled_photo_prior": judge_share(judge, near, jidx[folder]),
        "judge_top1_reconstructions": judge_share(judge, recon, jidx[folder]),
        "baseline_judge_says_held_out": judge_share(judge, before, jidx[folder]),
        "baseline_judge_top1_own": judge_share(judge, before, jidx[base_folder]) if base_folder in jidx else None,
        "diversity_enrolled": diversity(enrolled),
        "diversity_nearest_trained": diversity(before),
        "warnings": cls.warnings,
    }
    block = sheet_block(
        f"{folder}: judge top-1 {result['judge_top1_enrolled']:.0%} enrolled, "
        f"{result['baseline_judge_says_held_out']:.0%} before enrolment",
        [
            (f"E->G of the {photos} photos", recon),
            (f"before: nearest trained class {base_folder}", before[:SHEET_SAMPLES]),
            ("enrolled: samples", enrolled[:SHEET_SAMPLES]),
            ("enrolled, photo prior", near[:SHEET_SAMPLES]),
        ],
    )
    return {**result, "_class": cls}, block


def measure_reference(model, judge: Judge, folders: list[str], seeds: list[int]) -> dict[str, float]:
    """The judge's top-1 on samples of trained classes (same seeds): the figure enrolment is compared with."""
    jidx = {f: i for i, f in enumerate(judge.config.class_folders)}
    return {
        f: judge_share(judge, sample(model, model.config.class_folders.index(f), seeds, batch_size=BATCH), jidx[f])
        for f in folders
    }


# ------------------------------------------------------------------ the sheet


LABEL_W = 250


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def sheet_block(title: str, rows: list[tuple[str, torch.Tensor]], tile: int = 64) -> Image.Image:
    """A titled block of labelled rows of images ((N, 3, R, R) in [-1, 1]), tiles scaled to `tile` px."""
    pad, title_h = 4, 22
    cols = max(len(x) for _, x in rows)
    w = LABEL_W + cols * (tile + pad) + pad
    h = title_h + len(rows) * (tile + pad) + pad
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 6), title, fill="black")
    for r, (label, x) in enumerate(rows):
        y = title_h + r * (tile + pad)
        for k, line in enumerate(_wrap(label, 38)[:4]):
            d.text((pad, y + 4 + 13 * k), line, fill=(60, 60, 60))
        for c in range(len(x)):
            im = to_pil(x[c])
            if im.size != (tile, tile):
                im = im.resize((tile, tile), Image.NEAREST)
            img.paste(im, (LABEL_W + c * (tile + pad), y))
    return img


def stack_blocks(blocks: list[Image.Image], gap: int = 10) -> Image.Image:
    w = max(b.width for b in blocks)
    out = Image.new("RGB", (w, sum(b.height for b in blocks) + gap * (len(blocks) - 1)), "white")
    y = 0
    for b in blocks:
        out.paste(b, (0, y))
        y += b.height + gap
    return out


# ------------------------------------------------------------------ the experiment


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_enrolment(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    judge: str | os.PathLike,
    out: str | os.PathLike,
    classes: list[str] | None = None,
    photos: int = TARGET_PHOTOS,
    samples: int = 50,
    trained_classes: int = 8,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    threads: int | None = None,
    progress: bool = True,
    lambdas: tuple[float, float, float, float] = DEFAULT_LAMBDAS,
    layer_lr: float = LAYER_LR,
) -> dict:
    """The enrolment experiment (see the module doc); returns what enrolment.json holds. Re-running the same
    call resumes: classes whose result is cached under the same settings are not enrolled again."""
    from .hub import load_pretrained

    if not MIN_PHOTOS <= photos <= MAX_PHOTOS:
        raise EnrolmentExperimentError(f"--photos must be between {MIN_PHOTOS} and {MAX_PHOTOS}, got {photos}")
    if samples < 1 or trained_classes < 1 or steps < 1:
        raise EnrolmentExperimentError("--samples, --trained-classes and --steps must be at least 1")
    lambdas = check_lambdas(lambdas)
    layer_lr = check_layer_lr(layer_lr, "--layer-lr", EnrolmentExperimentError)
    if threads:
        torch.set_num_threads(threads)
    if classes is None:
        classes = recorded_exclusions(weights)
        if classes is None:
            raise EnrolmentExperimentError(
                f"{weights} records no classes left out of training (no train_config.json with exclude_classes "
                "in the weights folder or, for a run's export/, in its run folder); pass --classes a,b,..."
            )
    source = PhotoSource(data)
    with_d = (Path(weights) / "discriminator.safetensors").is_file()  # enrol uses D's features when present
    model = load_pretrained(weights, with_discriminator=with_d)
    judge_model = load_judge(judge)
    if judge_model.config.targets:
        raise EnrolmentExperimentError(f"{judge} is an attribute judge; pass a class judge (`cvaegan judge`)")
    judge_folders = list(judge_model.config.class_folders)
    model_folders = list(model.config.class_folders)
    check_classes(classes, model_folders, judge_folders, source, photos)

    out = Path(out)
    (out / "classes").mkdir(parents=True, exist_ok=True)
    seeds = list(range(SAMPLE_SEEDS, SAMPLE_SEEDS + samples))
    common = {  # what the trained-class reference depends on too
        "weights_sha256": {k: v[:16] for k, v in sorted(model.config.files.items())},
        "judge_sha256": {k: v[:16] for k, v in sorted(judge_model.config.files.items())},
        "photos": photos,
        "samples": samples,
        "sample_seeds": f"{seeds[0]}-{seeds[-1]}",
        "seed": seed,
        "steps": steps,
    }
    # lambdas always recorded: results cached before (no lambdas, no photo-prior figure) are enrolled again
    # "variety" names the diversity figure: results cached with the older per-pixel spread are measured again
    settings = {**common, "lambdas": list(lambdas), "layer_lr": layer_lr, "variety": "1 - MS-SSIM"}

    results: dict[str, dict] = {}
    blocks: list[Image.Image] = []
    bar = tqdm(classes, desc="enrolment", unit="class", disable=not progress, dynamic_ncols=True)
    for folder in bar:
        bar.set_postfix_str(folder)
        stem = str(out / "classes" / _safe(folder))  # (folders may hold dots: no with_suffix)
        cached = _read_json(Path(stem + ".json"))
        if cached and cached.get("settings") == settings and Path(stem + ".png").is_file():
            results[folder] = cached
        else:
            result, block = measure_class(
                model, judge_model, source, folder, photos, seeds, seed, steps, lambdas, layer_lr
            )
            save_classes(result.pop("_class"), stem + ".safetensors")
            block.save(stem + ".png")
            result["settings"] = settings
            _write_json(Path(stem + ".json"), result)  # written last: marks the class done
            results[folder] = result
        with Image.open(stem + ".png") as im:
            blocks.append(im.convert("RGB"))
        bar.set_postfix_str(f"{folder}: top-1 {results[folder]['judge_top1_enrolled']:.0%}")
    bar.close()

    candidates = [f for f in model_folders if f in judge_folders]
    ref_settings = {**common, "trained_classes": trained_classes}  # trained classes are not enrolled
    ref = _read_json(out / "reference.json")
    if not ref or ref.get("settings") != ref_settings:
        picked = pick_trained(candidates, trained_classes, seed)
        ref = {"settings": ref_settings, "top1": measure_reference(model, judge_model, picked, seeds)}
        _write_json(out / "reference.json", ref)

    report = summarise(results, ref["top1"], settings, weights, data, judge, judge_model)
    _write_json(out / "enrolment.json", report)
    (out / "enrolment.md").write_text(markdown(report), encoding="utf-8")
    stack_blocks(blocks).save(out / "enrolment_sheet.png")
    return report


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarise(
    results: dict[str, dict], reference: dict[str, float], settings: dict, weights, data, judge, judge_model: Judge
) -> dict:
    enrolled = _mean([r["judge_top1_enrolled"] for r in results.values()])
    trained = _mean(list(reference.values()))
    walls = [r["enrol"]["wall_s"] for r in results.values()]
    ratio = round(enrolled / trained, 4) if enrolled is not None and trained else None
    near = _mean([r["judge_top1_enrolled_photo_prior"] for r in results.values()])
    near_ratio = round(near / trained, 4) if near is not None and trained else None
    threads = sorted({r["enrol"]["threads"] for r in results.values()})
    return {
        "weights": str(weights),
        "data": str(data),
        "judge": str(judge),
        "judge_val_top1": judge_model.config.training.get("val_top1"),
        "settings": settings,
        "machine": machine(),
        "threads": threads,
        "classes": results,
        "trained_reference": reference,
        "means": {
            "judge_top1_enrolled": enrolled,
            "judge_top1_enrolled_photo_prior": near,
            "judge_top1_reconstructions": _mean([r["judge_top1_reconstructions"] for r in results.values()]),
            "baseline_judge_says_held_out": _mean([r["baseline_judge_says_held_out"] for r in results.values()]),
            "baseline_judge_top1_own": _mean([r["baseline_judge_top1_own"] for r in results.values()]),
            "diversity_enrolled": _mean([r.get("diversity_enrolled") for r in results.values()]),
            "diversity_nearest_trained": _mean([r.get("diversity_nearest_trained") for r in results.values()]),
            "judge_top1_trained": trained,
            "enrol_wall_s": _mean(walls),
            "enrol_wall_s_max": max(walls),
            "enrol_cpu_s": _mean([r["enrol"]["cpu_s"] for r in results.values()]),
        },
        "targets": {
            "top1_ratio": {
                "target": f"enrolled mean judge top-1 >= {TARGET_RATIO:.0%} of the trained classes' mean",
                "value": ratio,
                "met": None if ratio is None else ratio >= TARGET_RATIO,
            },
            "top1_ratio_photo_prior": {
                "target": f"the same with sample(..., prior='photos') for the enrolled classes (an option that "
                f"bends the prior; trained classes keep N(0, I)): >= {TARGET_RATIO:.0%}",
                "value": near_ratio,
                "met": None if near_ratio is None else near_ratio >= TARGET_RATIO,
            },
            "enrol_seconds": {
                "target": f"enrolment of {TARGET_PHOTOS} photos <= {TARGET_SECONDS:g} s wall on 2 CPU cores",
                "value": max(walls),
                "met": max(walls) <= TARGET_SECONDS if settings["photos"] == TARGET_PHOTOS else None,
                "threads": threads,
            },
        },
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured (other settings)"}[met]


def _lambdas_note(settings: dict) -> str:
    lam, layer_lr = settings.get("lambdas"), settings.get("layer_lr")  # (older results: none)
    note = "" if lam is None else ", loss weights l1-l4 " + ", ".join(f"{x:g}" for x in lam)
    return note + ("" if layer_lr is None else f", layer step size {layer_lr:g}")


def markdown(r: dict) -> str:
    s, m, t = r["settings"], r["means"], r["targets"]
    mach = r["machine"]
    threads = "/".join(str(x) for x in r["threads"])
    lines = [
        f"{len(r['classes'])} classes left out of training, enrolled from {s['photos']} photos each "
        f"({s['steps']} steps, seed {s['seed']}{_lambdas_note(s)}); {s['samples']} samples per class (seeds {s['sample_seeds']}) "
        f"judged by the independent judge (top-1 on held-out real photos: {_pct(r['judge_val_top1'])}), which "
        f"knows every class. Data `{Path(r['data']).name}`.",
        "",
        "| held-out class | judge top-1, enrolled | with the photo prior | E->G of the photos | nearest trained class | "
        "judge says the held-out class, before enrolment | C top-1 (16 samples) | photos' recon PSNR | "
        "enrolment wall / CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for folder, c in r["classes"].items():
        e = c["enrol"]
        lines.append(
            f"| {folder} | {_pct(c['judge_top1_enrolled'])} | {_pct(c['judge_top1_enrolled_photo_prior'])} "
            f"| {_pct(c['judge_top1_reconstructions'])} "
            f"| {c['nearest_trained']} | {_pct(c['baseline_judge_says_held_out'])} | {_pct(e['c_top1_samples'])} "
            f"| {e['recon_psnr_db_before']:.1f} -> {e['recon_psnr_db_after']:.1f} dB "
            f"| {e['wall_s']:.1f} s / {e['cpu_s']:.1f} s |"
        )
    lines.append(
        f"| **mean** | **{_pct(m['judge_top1_enrolled'])}** | {_pct(m['judge_top1_enrolled_photo_prior'])} "
        f"| {_pct(m['judge_top1_reconstructions'])} | "
        f"| {_pct(m['baseline_judge_says_held_out'])} | | | {m['enrol_wall_s']:.1f} s / {m['enrol_cpu_s']:.1f} s |"
    )
    ref = r["trained_reference"]
    tr, ts, tp = t["top1_ratio"], t["enrol_seconds"], t["top1_ratio_photo_prior"]
    ratio = "-" if tr["value"] is None else f"{tr['value']:.2f}"
    lines += [
        "",
        f"- Trained classes, same seeds: judge top-1 {_pct(m['judge_top1_trained'])} (mean of {len(ref)}: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in ref.items())
        + f"). Enrolled / trained: {ratio}; target >= "
        f"{TARGET_RATIO:g}: {_verdict(tr['met'])}.",
        f'- With the photo prior (`sample(..., prior="photos")`: z of an enrolled class drawn from a Gaussian '
        "fitted to E's codes of its photos, so samples stay near the photos; an option, not the paper's N(0, I), "
        f"and the trained classes above keep N(0, I)): enrolled / trained "
        f"{'-' if tp['value'] is None else format(tp['value'], '.2f')}; {_verdict(tp['met'])}.",
        f"- Enrolment time: {m['enrol_wall_s']:.1f} s wall on average, {ts['value']:.1f} s at most, with "
        f"{threads} torch thread(s) on {mach['cpu_count']} cores ({mach['cpu']}; load average at the end "
        f"{mach['load_average_1_5_15_min']}). Target <= {TARGET_SECONDS:g} s for {TARGET_PHOTOS} photos on 2 cores: "
        f"{_verdict(ts['met'])}.",
        *_diversity_line(m),
        "- Sheet, per class: E->G reconstructions of the enrolment photos through the enrolled class, samples of "
        f"the nearest trained class before enrolment, samples of the enrolled class, and the same seeds with the "
        f"photo prior (first {SHEET_SAMPLES} seeds).",
    ]
    return "\n".join(lines) + "\n"


def _diversity_line(m: dict) -> list[str]:
    if m.get("diversity_enrolled") is None:
        return []  # results cached before the figure existed
    return [
        f"- Variety (intra-class diversity, 1 - mean pairwise MS-SSIM over a class's first {DIVERSITY_SAMPLES} "
        f"samples, mean over classes; higher is more varied): enrolled {m['diversity_enrolled']:.3f}, the nearest "
        f"trained classes {m['diversity_nearest_trained']:.3f}."
    ]


def write_readme(out: str | os.PathLike, readme: str | os.PathLike, sheet_name: str) -> Path:
    """Put DIR/enrolment.md between README's <!-- enrol:start --> / <!-- enrol:end --> markers, with a link to
    a JPEG copy of the sheet written to docs/<sheet_name> beside the README. Returns the copy's path."""
    from .experiments import write_readme_section

    out, readme = Path(out), Path(readme)
    md = out / "enrolment.md"
    if not md.is_file():
        raise EnrolmentExperimentError(f"{md} not found; run the experiment first")
    if "<!-- enrol:start -->" not in readme.read_text(encoding="utf-8"):
        raise EnrolmentExperimentError(f"{readme} has no <!-- enrol:start --> / <!-- enrol:end --> markers")
    target = readme.parent / "docs" / sheet_name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    Image.open(out / "enrolment_sheet.png").convert("RGB").save(tmp, format="JPEG", quality=85, optimize=True)
    os.replace(tmp, target)
    text = md.read_text(encoding="utf-8") + f"\n![enrolment of held-out classes](docs/{sheet_name})\n"
    write_readme_section(readme, "enrol", text)
    return target
