"""Equal-budget recipe comparison: train a recipe for a fixed CPU time, judge its snapshots, tabulate and plot.

    python -m cvaegan.experiments budget --data faces.tar --recipe v2 --minutes 60 --out runs/budget_faces

Each recipe trains in DIR/<recipe>/ with `--budget-minutes M` at a fixed thread count; the training clock is
the process's CPU time divided by its threads (CPU-minutes), so other load on a shared machine slows a run
down without changing what it is allowed to compute. Checkpoints are kept at 15, 30, 60 and 120 minutes
(those up to M) and judged: top-1 of the independent judge on generated samples, FID in the judge's feature
space, reconstruction PSNR of held-out photos, intra-class diversity, and a sheet of 8 classes x 8 seeds.
Re-running the same command resumes training and skips snapshots already judged. Results of every recipe in
DIR land in DIR/budget.json, DIR/budget.md (the README table) and DIR/budget.png (top-1 against CPU-minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .speed import describe

MARKS = (15, 30, 60, 120)
SHEET_SEEDS = 8

# Named recipes: `train` arguments on top of the fixed budget settings. A preset name is a recipe too;
# the others are single candidates of ../RECIPE.md's list, each against "v1" (the first weights' recipe).
RECIPES: dict[str, list[str]] = {
    "v1": ["--preset", "v1"],
    "v2": ["--preset", "v2"],  # the budget runs in the README used the same values given as options
    "v3": ["--preset", "v3"],  # = v2+cbn below, under its preset name
    "paper": ["--preset", "paper"],
    "v1+stratify": ["--preset", "v1", "--stratify", "8"],
    "v1+joint": ["--preset", "v1", "--joint-ge"],
    "v1+cutout": ["--preset", "v1", "--diffaugment", "color,translation,cutout"],
    "v1+r1": ["--preset", "v1", "--r1-gamma", "0.025"],
    "v1+warm": ["--preset", "v1", "--pretrain-steps", "300"],
    "v1+sn": ["--preset", "v1", "--d-norm", "none", "--c-norm", "none", "--spectral-norm"],
    "v1+ttur": ["--preset", "v1", "--d-lr-mult", "2", "--beta2", "0.99"],
    "v1+lecam": ["--preset", "v1", "--lecam-weight", "0.3"],  # RECIPE.md item 4's optional LeCam term
    # beyond RECIPE.md's list: the class reaches every layer of G (G listens to z far more than to c)
    "v2+cbn": ["--preset", "v2", "--g-cond", "cbn"],
    "v2+caug": ["--preset", "v2", "--c-augment"],  # C stops learning the photos by heart
    "v3+selfsup": ["--preset", "v3", "--d-selfsup"],  # RECIPE.md item 5: FastGAN's self-supervised D
    # C's loss kept off 0, against the Adam spike the faces release run's C had at step ~23,450
    "v3+csmooth": ["--preset", "v3", "--c-label-smoothing", "0.1"],
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def recipe_args(recipe: str, extra: list[str] | None = None) -> list[str]:
    if recipe not in RECIPES and not extra:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)} or give --train-args")
    return list(RECIPES.get(recipe, [])) + list(extra or [])


def train_recipe(
    data: str, run: Path, recipe: str, minutes: float, threads: int, extra: list[str] | None = None, seed: int = 0
) -> None:
    """Train (or resume) `recipe` in `run` until it has used `minutes` CPU-minutes."""
    marks = [m for m in MARKS if m < minutes] + [minutes]  # the end of the budget is always a snapshot
    args = [
        "--data",
        data,
        "--out",
        str(run),
        "--budget-minutes",
        str(minutes),
        "--steps",
        str(10**9),
        "--snapshot-minutes",
        ",".join(str(m) for m in marks),
        "--threads",
        str(threads),
        "--val-fraction",
        "0.1",
        "--seed",
        str(seed),
        "--sample-every",
        "500",
        "--checkpoint-every",
        "100",
        "--log-every",
        "25",
        "--device",
        "cpu",
    ]
    state = run / "budget_state.json"
    if state.is_file() and json.loads(state.read_text()).get("minutes", 0) >= minutes:
        _log(f"{run.name}: already trained for {minutes} CPU-minutes")
        return
    resume = ["--resume"] if (run / "checkpoint.pt").is_file() else []
    cmd = [
        sys.executable,
        "-m",
        "cvaegan",
        "train",
        *args,
        *(recipe_args(recipe, extra) if not resume else []),
        *resume,
    ]
    _log(f"{run.name}: {' '.join(cmd[3:])}")
    run.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"{run.name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    state.write_text(json.dumps({"minutes": minutes}) + "\n")


def sheet(model, classes: list[int], out: Path) -> None:
    """8 classes x 8 seeds (rows: classes, columns: seeds 0-7), the same (z, c) for every recipe."""
    from .images import make_grid, save_png
    from .seeds import z_from_seeds

    z = z_from_seeds(list(range(SHEET_SEEDS)), model.config.z_dim)
    with torch.no_grad():
        rows = [model.generator.eval()(z, torch.full((SHEET_SEEDS,), c)) for c in classes]
    save_png(make_grid(torch.cat(rows).float().clamp(-1, 1), ncol=SHEET_SEEDS), out)


def evaluate_snapshot(snap: Path, data, judge, samples_per_class: int, sheet_path: Path) -> dict:
    """The judge's figures for one snapshot checkpoint, plus its training clock; writes its sheet.

    A run with an EMA of G is judged twice, EMA and live G (an EMA lags far behind early in training);
    the figures of the better one by top-1 are the row's, and both top-1s are kept."""
    from .evaluate import evaluate
    from .train import grid_classes, model_from_state

    state = torch.load(snap, map_location="cpu", weights_only=True)  # read once, judged once or twice
    clock = state.get("clock", {})
    out = {
        "step": int(state["step"]),
        "images_seen": int(clock.get("images", 0)),
        "wall_min": round(clock.get("wall_s", 0) / 60, 2),
        "threads": clock.get("threads"),
        "machine_gflops": describe(clock.get("machines")),
    }
    best = None
    for kind in ["ema", "live"] if state.get("ema") is not None else ["live"]:
        model = model_from_state(state, use_ema=kind == "ema")
        r = evaluate(model, judge, data, samples_per_class, inpaint_images=0, progress=False)
        out[f"top1_{kind}"] = top1 = r["discriminability"]["judge_top1_generated"]
        if best is None or top1 > best[1]["discriminability"]["judge_top1_generated"]:
            best = (kind, r, model)
    del state
    kind, r, model = best
    sheet(model, grid_classes(model.config.num_classes, 8), sheet_path)
    out.update(
        {
            "generator": kind,
            "top1": r["discriminability"]["judge_top1_generated"],
            "real_top1": r["discriminability"]["judge_top1_real_val"],
            "fid": r["fid_judge"],
            "psnr": r["reconstruction"]["psnr_db"],
            "diversity": r["intra_class_diversity"]["generated"],
            "samples": r["generated_images"],
        }
    )
    return out


def judge_snapshots(run: Path, data, judge, samples_per_class: int) -> dict:
    """Judge every snapshot of `run` not yet judged by this judge; results cached in run/judged.json."""
    from .train import kept_snapshots

    cache_path = run / "judged.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key_judge = str(judge.config.files.get("judge.safetensors", ""))[:12]
    for minute, snap in kept_snapshots(run):
        if cache.get(minute, {}).get("judge") == key_judge:
            continue
        _log(f"{run.name}: judging the {minute}-minute snapshot")
        cache[minute] = {
            "judge": key_judge,
            **evaluate_snapshot(snap, data, judge, samples_per_class, run / f"sheet_{minute}min.png"),
        }
        cache_path.write_text(json.dumps(cache, indent=1) + "\n")
    return cache


def collect(out: Path) -> dict[str, dict]:
    """Every recipe folder's judged snapshots: recipe -> minute -> figures."""
    res = {}
    for p in sorted(out.glob("*/judged.json")):
        rows = json.loads(p.read_text())
        arch = p.parent / "model_config.json"  # the width: train's default changed (base 32 -> 16 at 64 px)
        base = json.loads(arch.read_text()).get("base_channels") if arch.is_file() else None
        res[p.parent.name] = {m: {**r, "base_channels": base} for m, r in rows.items()}
    return res


def markdown(results: dict[str, dict], data_name: str) -> str:
    if not results:
        return "No judged runs yet.\n"
    any_row = next(iter(next(iter(results.values())).values()))
    threads = sorted({str(r.get("threads")) for rows in results.values() for r in rows.values()})
    lines = [
        f"`{data_name}`, {'/'.join(threads)} threads, judge top-1 on held-out real photos "
        f"{100 * any_row['real_top1']:.1f}% (the ceiling); {any_row['samples']} samples per row.",
        "",
        "| recipe | CPU-minutes | steps | images seen | wall minutes | machine (GFLOP/CPU-s) | base width "
        "| judge top-1 on samples (G used) | top-1: EMA / live G | FID (judge) | recon PSNR (held-out) | diversity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe, rows in results.items():
        for minute in sorted(rows, key=float):
            r = rows[minute]
            both = " / ".join(f"{100 * r[k]:.1f}%" if k in r else "-" for k in ("top1_ema", "top1_live"))
            lines.append(
                f"| {recipe} | {minute} | {r['step']:,} | {r['images_seen']:,} | {r['wall_min']} "
                f"| {r.get('machine_gflops', '-')} | {r.get('base_channels') or '-'} "
                f"| {100 * r['top1']:.1f}% ({r.get('generator', 'live')}) | {both} | {r['fid']:.2f} "
                f"| {r['psnr']:.2f} dB | {r['diversity']:.3f} |"
            )
    lines.append("")
    lines.append(
        "Each row is judged with the better of the EMA of G and the live G by top-1 (both top-1s shown); "
        "sheets: `sheet_<minutes>min.png` in each run folder, rows = 8 classes, columns = seeds 0-7. "
        "Machine: the speed reference of `cvaegan.speed` (a 3x3 convolution, forward and backward, on one "
        "thread) where the run trained; CPU-minutes compare only between rows of similar machines."
    )
    return "\n".join(lines) + "\n"


def time_to_quality(results: dict[str, dict], thresholds=(0.10, 0.25, 0.50)) -> str:
    """Markdown: per recipe, images per second of CPU time and the CPU-minutes at which judge top-1 first
    reaches each threshold (linear between judged snapshots), or "not by M min" with the best top-1 reached."""
    head = " | ".join(f"CPU-min to {100 * t:g}%" for t in thresholds)
    lines = [f"| recipe | images / CPU-second | {head} |", "|---" * (2 + len(thresholds)) + "|"]
    for recipe, rows in results.items():
        pts = sorted((float(m), r) for m, r in rows.items())
        if not pts:
            continue
        last_min, last = pts[-1]
        speed = last["images_seen"] / (60 * last_min) if last_min > 0 else 0.0
        cells = []
        for t in thresholds:
            prev, hit = (0.0, 0.0), None
            for m, r in pts:
                if r["top1"] >= t:
                    (m0, y0), y1 = prev, r["top1"]
                    hit = m0 + (m - m0) * (t - y0) / (y1 - y0) if y1 > y0 else m
                    break
                prev = (m, r["top1"])
            best = max(r["top1"] for _, r in pts)
            cells.append(f"{hit:.0f}" if hit is not None else f"not by {last_min:g} (best {100 * best:.1f}%)")
        lines.append(f"| {recipe} | {speed:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COLOURS = [
    (200, 60, 40),
    (40, 110, 200),
    (40, 160, 80),
    (150, 80, 180),
    (230, 150, 20),
    (90, 90, 90),
    (20, 170, 170),
    (180, 40, 120),
    (120, 120, 30),
    (0, 0, 0),
]


def plot(results: dict[str, dict], out: Path, title: str) -> None:
    """Judge top-1 on samples against CPU-minutes, one line per recipe (PIL; no plotting dependency)."""
    w, h, left, bottom, top = 720, 420, 60, 50, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    pts = {r: sorted((float(m), v["top1"]) for m, v in rows.items()) for r, rows in results.items()}
    xmax = max([x for p in pts.values() for x, _ in p] + [15])
    ymax = max([y for p in pts.values() for _, y in p] + [0.05]) * 1.15
    pw, ph = w - left - 170, h - top - bottom
    X = lambda x: left + int(pw * x / xmax)  # noqa: E731
    Y = lambda y: top + ph - int(ph * y / ymax)  # noqa: E731
    d.line([left, top, left, top + ph, left + pw, top + ph], fill="black")
    step = next(t for t in (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25) if ymax / t <= 6)  # round ticks
    for k in range(int(ymax / step) + 1):
        y = step * k
        d.text((5, Y(y) - 6), f"{100 * y:g}%", fill="black")
        d.line([left - 3, Y(y), left + pw, Y(y)], fill=(225, 225, 225))
    for m in sorted({float(m) for rows in results.values() for m in rows}):
        if m <= xmax:
            d.text((X(m) - 8, top + ph + 6), f"{m:g}", fill="black")
    d.text((left + pw // 2 - 60, h - 20), "CPU-minutes (process CPU time / threads)", fill="black")
    for i, (recipe, p) in enumerate(pts.items()):
        col = COLOURS[i % len(COLOURS)]
        xy = [(X(x), Y(y)) for x, y in p]
        if len(xy) > 1:
            d.line(xy, fill=col, width=3)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=col)
        d.rectangle([w - 160, top + 20 * i, w - 148, top + 20 * i + 12], fill=col)
        d.text((w - 142, top + 20 * i), recipe, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def run_budget(
    data_path: str,
    recipe: str,
    minutes: float,
    out: str | Path,
    judge_dir: str,
    threads: int = 2,
    samples_per_class: int = 10,
    extra: list[str] | None = None,
    name: str | None = None,
    seed: int = 0,
    train_only: bool = False,
) -> dict:
    out = Path(out)
    run = out / (name or recipe)
    train_recipe(data_path, run, recipe, minutes, threads, extra, seed)
    if train_only:
        return {}
    from .data import load_images
    from .judge import load_judge

    torch.set_num_threads(threads)
    judge = load_judge(judge_dir)
    data = load_images(data_path, judge.config.resolution, progress=False)
    for folder in sorted(p.parent for p in out.glob("*/snapshots")):
        judge_snapshots(folder, data, judge, samples_per_class)
    results = collect(out)
    (out / "budget.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "budget.md").write_text(markdown(results, Path(data_path).name))
    (out / "time_to_quality.md").write_text(time_to_quality(results))
    plot(results, out / "budget.png", f"{Path(data_path).name}: judge top-1 on samples vs CPU-minutes")
    return results
