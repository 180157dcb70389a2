"""Turning a training run into a published weights folder: export, latent directions, figures measured
on the held-out split, pictures and the model card (card.py writes it); optionally only when an independent
judge says the run is better than the weights it replaces (gate.py). A weights folder must stay within
MAX_FOLDER_BYTES, and each of its files within MAX_FILE_BYTES (check_folder_size)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import inference as I
from .card import (
    DIRECTIONS_SHEET,
    LEGACY_SHEETS,
    THUMBNAILS,
    directions_table,
    loss_curves,
    model_card,
    replace_directions_section,
    same_judge,
    thumbnail_sheet,
)
from .config import recipe_options
from .data import LabelledImages, load_images, split_indices
from .directions import check_directions, compute_directions, directions_sheet
from .errors import CVAEGANError, InputError
from .evaluate import FIRST_SEED
from .feather import FeatherError, carry_over, fit_feather
from .gate import MIN_Z
from .guesser import read_guesser, reattach
from .hub import TRAINING_TOTAL_KEYS, held_out_fraction, load_folder
from .images import make_grid, psnr, save_jpeg, save_png, to_pil, uint8_to_float
from .judge import load_attribute_judge
from .models import CVAEGAN, GUESSER_NAME
from .refit import read_figures
from .seeds import z_from_seeds
from .speed import hardware_text, training_hardware
from .train import WARM_START, drop_classes, export_checkpoint, grid_classes, run_checkpoint

MAX_FOLDER_BYTES = 20 * 2**20  # a weights folder (the app's repo and the Hub carry several)
MAX_FILE_BYTES = 15 * 2**20  # one file of it
# files an earlier release may have left in OUT that describe other weights or were renamed since
STALE_FILES = (*LEGACY_SHEETS.values(), "evaluation.json")


class ReleaseError(CVAEGANError):
    """A release that cannot be published as it is (e.g. a weights folder over the size limits)."""


def check_folder_size(
    folder: str | os.PathLike, max_folder: int = MAX_FOLDER_BYTES, max_file: int = MAX_FILE_BYTES, label: str = ""
) -> int:
    """The size in bytes of a weights folder; ReleaseError naming the biggest files when the folder is over
    max_folder or one of its files over max_file (label: what to call the folder in the message)."""
    folder = Path(folder)
    files = sorted(((p.stat().st_size, p) for p in folder.rglob("*") if p.is_file()), key=lambda t: -t[0])
    total = sum(n for n, _ in files)
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    over = [f"{p.relative_to(folder).as_posix()} is {mib(n)}" for n, p in files if n > max_file]
    if total > max_folder:
        over.insert(0, f"the folder holds {mib(total)}")
    if over:
        biggest = ", ".join(f"{p.relative_to(folder).as_posix()} {mib(n)}" for n, p in files[:4])
        raise ReleaseError(
            f"{label or folder}: {'; '.join(over)}, over the limits ({mib(max_folder)} per weights folder, "
            f"{mib(max_file)} per file). Biggest files: {biggest}. Ship narrower networks (--max-channels when "
            "training) or leave D out (`release --no-discriminator`)"
        )
    return total


def excluded_folders(run_cfg: dict) -> list[str]:
    """The class folders a run left out of training (train_config.json's exclude_classes)."""
    return [f.strip() for f in (run_cfg.get("exclude_classes") or "").split(",") if f.strip()]


def run_split(
    data: LabelledImages, val_fraction: float, excluded: list[str]
) -> tuple[LabelledImages, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The classes and split a run trained with, as train() draws them: the split on ALL classes of the data
    (so held-out photos are the same whatever was excluded), then the excluded classes dropped. Returns
    (data without them, train indices, held-out indices, held-out indices into the full data).
    val_fraction 0 (no held-out split): a 10% split to measure on, of photos the run trained on."""
    train_idx, val_idx = split_indices(data.labels, val_fraction if val_fraction > 0 else 0.1)
    full_val = val_idx
    if excluded:
        unknown = sorted(set(excluded) - set(data.class_folders))
        if unknown:
            raise InputError(
                f"the run left out class folders {unknown[:5]} (exclude_classes in its train_config.json) that "
                "the data does not have; pass the data the run was trained on"
            )
        data, train_idx, val_idx = drop_classes(data, excluded, train_idx, val_idx)
    return data, train_idx, val_idx, full_val


@torch.no_grad()
def measure(model: CVAEGAN, val: LabelledImages, samples_per_class: int = 4, first_seed: int = 10_000) -> dict:
    """Figures on held-out real images and on generated samples (C judges both: it is NOT independent)."""
    x = uint8_to_float(val.images)
    pred, _ = I.classify(model, x)
    real_top1 = (pred == val.labels).float().mean().item()
    db = psnr(I.reconstruct_batch(model, x, val.labels), x)
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
        "recon_psnr_val_db": round(db.mean().item(), 2),
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


def checkpoint_rows(run: Path, snapshot: float | None = None) -> tuple[int, list[dict], dict]:
    """The step of RUN's checkpoint (or of its snapshot at SNAPSHOT CPU-minutes), the metrics.jsonl rows up to it
    (a run that went on after its last checkpoint logged steps that the exported networks never saw) and its
    clock ({} for runs from before the clock; "machines": the machine of each training process)."""
    state = torch.load(run_checkpoint(run, snapshot), map_location="cpu", weights_only=True)
    step, clock = int(state["step"]), dict(state.get("clock") or {})
    del state
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return step, [r for r in rows if r.get("step", 0) <= step], clock


def training_clock(rows: list[dict]) -> dict | None:
    """The run's clock at its last logged step (metrics.jsonl's clock/*, summed over resumes by `train`):
    {"cpu_min", "wall_min", "images"}, or None for runs logged before the clock existed."""
    last = next((r for r in reversed(rows) if "clock/cpu_min" in r), None)
    if last is None:
        return None
    return {"cpu_min": last["clock/cpu_min"], "wall_min": last["clock/wall_min"], "images": int(last["clock/images"])}


def training_total(run: Path, steps: int, clock: dict | None) -> dict:
    """figures.json's record of all the training the released networks had: "training_total" {"steps", "cpu_min",
    "wall_min", "images"} (this run plus, for a warm start, what its source weights had had) and, for a warm
    start, "warm_start" {"init_from": the source folder's name, "trained_before": its figures or None}. {} when
    the run's clock is unknown; a warm start from weights with unknown training records no total."""
    try:
        warm = json.loads((run / WARM_START).read_text(encoding="utf-8"))
    except OSError:
        warm = None
    except ValueError as e:
        raise ReleaseError(f"{run / WARM_START} is not valid JSON ({e}); restore it or delete it") from e
    if warm is not None and not isinstance(warm, dict):
        raise ReleaseError(f"{run / WARM_START} is not what `train --init-from` writes; restore it or delete it")
    out: dict = {}
    before = None
    if warm is not None:
        before = warm.get("trained_before")
        out["warm_start"] = {"init_from": Path(str(warm.get("init_from", ""))).name, "trained_before": before}
    if clock is None or (warm is not None and not before):
        return out
    this = {"steps": steps, **clock}
    out["training_total"] = {k: round(this[k] + (before[k] if before else 0), 3) for k in TRAINING_TOTAL_KEYS}
    return out


def _wall_time(rows: list[dict]) -> float:
    """Training seconds from metrics.jsonl: each row's time/step_s times the steps since the previous row."""
    total, prev = 0.0, 0
    for r in rows:
        total += r.get("time/step_s", 0.0) * (r["step"] - prev)
        prev = r["step"]
    return total


EXAMPLE_SEEDS = range(100, 108)  # the candidates of each example photo


@torch.no_grad()
def clearest_sample(model: CVAEGAN, c: int, seeds=EXAMPLE_SEEDS, truncation: float = 0.8) -> tuple[int, torch.Tensor]:
    """Of one class's samples for `seeds`, the one the model's own C gives the highest probability of that
    class (the first on ties) -> (seed, image (3, R, R)). An example photo should read as its class."""
    seeds = list(seeds)
    imgs = I.sample(model, c, seeds, truncation=truncation)
    model.classifier.eval()
    p = model.classifier(imgs.to(model.device))[0].float().softmax(1)[:, c].cpu()
    best = int(p.argmax())
    return seeds[best], imgs[best]


def write_examples(model: CVAEGAN, name: str, out: str | os.PathLike, count: int = 3) -> list[Path]:
    """Generated example photos + masks for the app's Inpaint tab: OUT/<name>_<i>_image.png and _mask.png
    (mask: opaque white = fill in; a centre box, a horizontal band, a diagonal stroke). Each photo is the
    sample C is surest of among seeds 100-107 of its class (clearest_sample)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = model.config.resolution
    classes = grid_classes(model.config.num_classes, count)
    paths = []
    for i, c in enumerate(classes):
        img = clearest_sample(model, c)[1]
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
    with attr_judge when given), draw the directions sheet (directions.jpg). Returns (figures to record, the
    card's section)."""
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
    save_jpeg(make_grid(directions_sheet(model, amounts), ncol=5), out / DIRECTIONS_SHEET)
    (out / LEGACY_SHEETS[DIRECTIONS_SHEET]).unlink(missing_ok=True)  # an older release's sheet, superseded
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
    directions.safetensors, config.json, the directions sheet (directions.jpg; an old directions.png is
    removed), figures.json and the card's directions section are replaced; the networks and every other
    figure stay as they are."""
    folder = Path(folder)
    attr_judge = load_attribute_judge(attribute_judge, device) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge, device) if direction_judge is not None else None
    model = load_folder(folder, device)
    data = load_images(data_path, model.config.resolution)
    fig_path, card_path = folder / "figures.json", folder / "README.md"
    figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
    held_out = figures.get("split") == "held-out"  # then the directions use the training part only, as in release
    excluded = [e["folder"] for e in figures.get("excluded_classes", [])]
    if excluded and set(excluded) <= set(data.class_folders):  # the classes the release left out, as it did
        data, train_idx, _, _ = run_split(data, figures.get("val_fraction") or 0.1, excluded)
    else:
        train_idx = split_indices(data.labels, figures.get("val_fraction") or 0.1)[0]
    if data.class_folders != model.config.class_folders:
        raise InputError(f"{data_path} has other classes than the weights in {folder}; use the training data")
    train_set = data.subset(train_idx) if held_out else data
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


def _install(export: Path, out: Path) -> None:
    """Copy a fresh export into OUT (config.json last) and remove what an earlier release left there that
    no longer belongs: renamed picture sheets, the old judge's evaluation.json, D when none was exported."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted((p.name for p in export.iterdir() if p.is_file()), key=lambda n: n == "config.json")
    for name in names:
        shutil.copyfile(export / name, out / name)
    stale = [
        *STALE_FILES,
        *(n for n in ("discriminator.safetensors", "running_means.safetensors", GUESSER_NAME) if n not in names),
    ]
    for name in stale:
        (out / name).unlink(missing_ok=True)


def _check_split_file(run: Path, data: LabelledImages, val_idx: torch.Tensor) -> None:
    """The held-out photos release measures on must be the ones the run held out (its split.json)."""
    path = run / "split.json"
    if not path.is_file():
        return
    kept = json.loads(path.read_text()).get("val")
    if kept is not None and sorted(kept) != sorted(data.paths[i] for i in val_idx.tolist()):
        raise InputError(
            f"the held-out photos drawn from this data differ from the run's {path.name}; pass the data the run "
            "was trained on (same folders and files)"
        )


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
    judge: str | os.PathLike | None = None,
    only_if_better: bool = False,
    fid_tolerance: float = 1.1,
    min_z: float = MIN_Z,
    samples_per_class: int = 10,
    gate_first_seed: int = FIRST_SEED,
    include_discriminator: bool = True,
    gate_only: bool = False,
    snapshot: float | None = None,
) -> dict:
    """Export RUN's checkpoint into OUT and add directions, figures, pictures and the model card.
    attribute_judge: a folder from `cvaegan judge --attributes` that re-measures every direction;
    direction_judge: one whose estimates on generated samples fit the attr_* directions (default: fit
    them on E's codes of the training photos); decorrelate: see directions.compute_directions.

    A run trained with --exclude-classes is measured on the held-out photos of the classes it trained on
    (the same photos train() held out) and its card lists the classes left out.

    judge: a class judge folder (`cvaegan judge`): before OUT is touched, the candidate and the weights in OUT
    are compared (gate.compare; written to RUN/gate.json and returned as figures["release_gate"]); with
    only_if_better, gate.GateRefused is raised and OUT left as it was unless the candidate is better. At the
    end the folder must pass check_folder_size (ReleaseError otherwise).

    gate_only (needs judge): the gate as a dry run, for a working stretch that ends before a release fits: the
    comparison is measured and written to RUN/gate.json, and OUT is never touched. Returns {"release_gate":
    the comparison} when the candidate would be released; raises gate.GateRefused when it would not.
    gate_first_seed: the first seed of the gate's samples (gate.compare).

    snapshot: release (or gate) the checkpoint the run kept at that many CPU-minutes (`train --snapshot-minutes`,
    RUN/snapshots/minute_<M>.pt) instead of its last one, e.g. when the run got worse after it; the card, the
    figures and the gate record which one."""
    from .gate import GATE_FILE, GateRefused, compare, write_comparison
    from .judge import load_judge

    run, out = Path(run), Path(out)
    # the checkpoint file to ship, relative to RUN (TrainError naming the snapshots kept when it is missing)
    checkpoint = run_checkpoint(run, snapshot).relative_to(run).as_posix()
    if (only_if_better or gate_only) and judge is None:
        flag = "--gate-only" if gate_only else "--only-if-better"
        raise InputError(f"{flag} needs --judge JUDGE_FOLDER (a class judge from `cvaegan judge`)")
    attr_judge = load_attribute_judge(attribute_judge) if attribute_judge is not None else None
    fit_judge = load_attribute_judge(direction_judge) if direction_judge is not None else None
    class_judge = load_judge(judge) if judge is not None else None
    run_cfg = json.loads((run / "train_config.json").read_text())
    val_fraction = run_cfg.get("val_fraction") or 0
    held_out = val_fraction > 0
    excluded = excluded_folders(run_cfg)
    released_held = held_out_fraction(out) if class_judge is not None else 0.0
    if released_held and not held_out:
        raise InputError(
            f"{run} trained on every photo, but the weights in {out} are measured on photos held out of their "
            f"training ({released_held:g} of each class): the gate would score the candidate on photos it trained "
            f"on. Train with --val-fraction {released_held:g} (`train --init-from` keeps it by default)"
        )
    state_step, rows, state_clock = checkpoint_rows(run, snapshot)
    total = training_total(run, state_step, training_clock(rows))  # read now: a broken file stops before OUT changes
    gate = None
    with tempfile.TemporaryDirectory(prefix="cvaegan-release-") as tmp:
        # the candidate exactly as it would ship (float16 files), exported next to OUT's weights, not over them
        export_checkpoint(run, tmp, use_ema=use_ema, include_discriminator=include_discriminator, snapshot=snapshot)
        candidate = load_folder(tmp)
        full = load_images(data_path, candidate.config.resolution)
        data, train_idx, val_idx, full_val = run_split(full, val_fraction, excluded)
        if data.class_folders != candidate.config.class_folders:
            raise InputError(f"{data_path} does not hold the classes this run was trained on")
        if held_out:
            _check_split_file(run, data, val_idx)
        if class_judge is not None:
            gate = compare(
                candidate,
                out,
                class_judge,
                judge,
                full,
                full_val,
                data_path,
                samples_per_class,
                fid_tolerance,
                held_out,
                min_z,
                gate_first_seed,
            )
            gate["candidate"]["run"], gate["candidate"]["step"] = str(run), state_step
            gate["candidate"]["checkpoint"] = checkpoint
            write_comparison(gate, run / GATE_FILE)
            if (only_if_better or gate_only) and not gate["passed"]:
                raise GateRefused(gate)
            if gate_only:
                return {"release_gate": gate}
        # a class guesser for the same classes learned the photos, not the networks: it stays (re-measured below)
        kept_guesser = read_guesser(out, candidate.config.class_folders)
        # a detail feather depends on G: measured again below when the judge is at hand, else carried over
        kept_feather = read_figures(out).get("inpaint_feather") if (out / "figures.json").is_file() else None
        del candidate
        check_folder_size(tmp, label=f"{out} (its networks)")  # too big already: stop before OUT is touched
        _install(Path(tmp), out)
    model = load_folder(out)
    names = dict(zip(full.class_folders, full.class_names))
    train_set = data.subset(train_idx) if held_out else data
    figures = measure(model, data.subset(val_idx))
    figures["inpaint_psnr_by_iterations"] = measure_inpainting(model, data.subset(val_idx))
    dir_figures, table_md = fit_and_check_directions(
        model, out, train_set, components, fit_judge, attr_judge, decorrelate
    )
    figures.update(dir_figures)
    figures["steps"] = state_step
    figures["checkpoint"] = checkpoint
    figures["generator"] = "EMA of G" if use_ema and run_cfg.get("ema_decay") else "G (no EMA)"
    figures["split"] = "held-out" if held_out else "training images (the run kept no held-out split)"
    figures["val_fraction"] = val_fraction if held_out else 0.1
    figures["excluded_classes"] = [{"folder": f, "name": names[f]} for f in excluded]
    figures["clock"] = training_clock(rows)
    figures["machines"] = state_clock.get("machines", [])  # the card's hardware row; speed.training_hardware
    figures["training"] = recipe_options(run_cfg)  # what a warm start from these weights compares itself with
    figures.update(total)
    if gate is not None:
        figures["release_gate"] = gate
    classes = grid_classes(model.config.num_classes, 8)
    grid = torch.cat([I.sample(model, c, list(range(8))) for c in classes])
    save_png(make_grid(grid, ncol=8), out / "samples.png")
    save_jpeg(thumbnail_sheet(model), out / THUMBNAILS)
    loss_curves(rows, out / "loss_curves.png")
    hw = (
        hardware
        or training_hardware(figures["machines"], state_clock.get("threads"))
        or f"{hardware_text()} (the machine that released it: the run recorded none)"
    )
    (out / "README.md").write_text(model_card(name, model, run_cfg, figures, _wall_time(rows), hw, notes) + table_md)
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    if kept_guesser is not None:
        figures["guesser"] = reattach(model, out, kept_guesser, data.subset(val_idx) if held_out else None)
    if kept_feather:
        try:
            if judge is None or not held_out:
                raise FeatherError("no judge or no held-out photos to measure it again")
            figures["inpaint_feather"] = fit_feather(
                out,
                data_path,
                judge,
                kept_feather["candidates_px"],
                tolerance=kept_feather["tolerance"],
                progress=False,
            )
        except FeatherError:  # e.g. too few held-out photos beyond the card's: keep the one measured before
            figures["inpaint_feather"] = carry_over(model, out, kept_feather)
    if examples is not None:
        write_examples(model, name, examples)
    check_folder_size(out)
    return figures
