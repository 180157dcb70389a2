"""How far from a hole's rim the inpainting trusts the model's detail: measured per weights folder.

The seamless paste (`blend.seamless_paste`) fills a hole with the photo's own smooth fill of it (the harmonic
interpolation of the pixels around it) plus the model's detail (G's fill minus its own smooth fill). Next to the
rim the photo's smooth fill is hard to beat: a thin scratch is one or two pixels from known pixels on both sides.
How much of G's detail helps there depends on how closely G reconstructs photos, so it is measured for each weights
folder: `fit_feather` inpaints held-out photos (the 25% box, thin strokes and free-form brush, the card's mask kinds,
with the true class) with the detail fading in over each candidate number of model pixels (0: pasted everywhere),
scores each by PSNR in the hole and by an independent judge's top-1 on the results, and keeps the candidate with the
best mean PSNR whose mean judge top-1 is at most `TOLERANCE` below the unfeathered paste's: closer to the photo
without losing what makes it recognisable. The value goes to config.json's `inpaint_feather`, which the app, the CLI
and `cvaegan evaluate` use; the measurements to figures.json's "inpaint_feather" record and the card. The photos are
the held-out ones after the card's (`evaluate.inpaint_photo_order`), so the card's figures stay a fair test. Not in
the paper.
"""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .card import put_record
from .errors import InputError
from .evaluate import (
    CARD_INPAINT_PHOTOS,
    MASK_KINDS,
    _judge_top1,
    box_layout,
    check_compatible,
    inpaint_photo_order,
    judge_indices,
    make_mask,
    psnr_ssim,
    user_inpaint_feathers,
)
from .images import uint8_to_float
from .judge import load_judge
from .refit import load_with_photos

CANDIDATES = (0.0, 2.0, 4.0, 8.0)  # model pixels; 0 (the paste without feather) is always measured
TOLERANCE = 0.015  # the mean judge top-1 a feather may lose against 0 (about the noise of a few hundred photos)
MIN_PHOTOS = 16  # fewer held-out photos than this beyond the card's: refused
CARD_PHOTOS = CARD_INPAINT_PHOTOS  # `evaluate --card` measures the first ones of `inpaint_photo_order`: skipped here
MAX_FEATHER = 64.0


class FeatherError(InputError):
    """A feather cannot be measured as asked; the message says why and what to do."""


def check_candidates(candidates) -> list[float]:
    """The candidates as sorted floats with 0 among them; FeatherError unless each is 0-64 model pixels."""
    try:
        values = sorted({float(v) for v in candidates} | {0.0})
    except (TypeError, ValueError) as e:
        raise FeatherError(f"--candidates must be numbers of model pixels such as 0,2,4,8 ({e})") from e
    if not all(0 <= v <= MAX_FEATHER for v in values) or len(values) < 2:
        raise FeatherError(f"--candidates need at least one value above 0, each at most {MAX_FEATHER:g}; got {values}")
    return values


def choose(results: dict[float, dict], tolerance: float = TOLERANCE) -> float:
    """The candidate with the best mean PSNR among those whose mean judge top-1 is at most `tolerance` below the
    unfeathered paste's (candidate 0). results: candidate -> {"mean_psnr_db", "mean_judge_top1", ...}."""
    floor = results[0.0]["mean_judge_top1"] - tolerance
    allowed = [f for f, r in results.items() if r["mean_judge_top1"] >= floor - 1e-9]
    return max(allowed, key=lambda f: (round(results[f]["mean_psnr_db"], 6), -f))


def measure(model, val, judge, candidates: list[float], photos: int | None, iterations: int, progress: bool) -> dict:
    """candidate -> {kind: {"psnr_db", "judge_top1"}, "mean_psnr_db", "mean_judge_top1"} on the held-out photos
    `val` (labelled with the model's class indices) after the card's, at most `photos` of them."""
    order = inpaint_photo_order(len(val.labels))[CARD_PHOTOS:]
    order = order[:photos] if photos else order
    if len(order) < MIN_PHOTOS:
        raise FeatherError(
            f"only {len(order)} held-out photos beyond the card's {CARD_PHOTOS}: too few to measure a feather on"
        )
    layout = box_layout(model.config.class_folders)
    judge_y = judge_indices(judge, model.config.class_folders)[val.labels[order]]
    r = model.config.resolution
    scores = {f: {k: ([], []) for k in MASK_KINDS} for f in candidates}
    bar = tqdm(total=len(order) * len(MASK_KINDS), desc="fit-feather", disable=not progress, dynamic_ncols=True)
    for j, i in enumerate(order.tolist()):
        x = uint8_to_float(val.images[i : i + 1])
        for kind in MASK_KINDS:
            m = make_mask(kind, r, CARD_PHOTOS + j, layout)  # other strokes than the card's
            outs = user_inpaint_feathers(model, val.images[i], m, int(val.labels[i]), iterations, candidates)
            for f, out in outs.items():
                scores[f][kind][0].append(psnr_ssim(out, x, m)[0].item())
                scores[f][kind][1].append(out)
            bar.update(1)
    bar.close()
    results = {}
    for f in candidates:
        entry = {
            k: {
                "psnr_db": round(float(np.mean(p)), 3),
                "judge_top1": round(_judge_top1(judge, torch.cat(outs), judge_y), 4),
            }
            for k, (p, outs) in scores[f].items()
        }
        entry["mean_psnr_db"] = round(float(np.mean([entry[k]["psnr_db"] for k in MASK_KINDS])), 3)
        entry["mean_judge_top1"] = round(float(np.mean([entry[k]["judge_top1"] for k in MASK_KINDS])), 4)
        results[f] = entry
    return {"photos": len(order), "results": results}


def fit_feather(
    folder: str | os.PathLike,
    data_path: str | os.PathLike,
    judge_path: str | os.PathLike,
    candidates=CANDIDATES,
    photos: int | None = None,
    tolerance: float = TOLERANCE,
    iterations: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Measure the detail feather of the weights folder FOLDER on held-out photos of DATA (the data it was trained
    on) with the judge JUDGE_PATH, and write the chosen one into the folder: config.json's `inpaint_feather`,
    figures.json's "inpaint_feather" record and the card's "Inpainting feather" section. Nothing is written when
    anything fails. Returns the record."""
    from .blend import DEFAULT_ITERATIONS

    candidates = check_candidates(candidates)
    if not 0 <= tolerance <= 1:
        raise FeatherError(f"--tolerance is a share of photos from 0 to 1 (e.g. {TOLERANCE}), got {tolerance}")
    if photos is not None and photos < MIN_PHOTOS:
        raise FeatherError(f"--photos must be at least {MIN_PHOTOS}, got {photos}")
    folder = Path(folder)
    judge = load_judge(judge_path, device)  # before the data loads: a wrong path fails at once
    model, data, _, val, _ = load_with_photos(
        folder, data_path, device, progress, "the feather could not be measured on them", FeatherError
    )
    check_compatible(model, judge, data)  # a class judge of this data (an attribute judge cannot score classes)
    if val is None:
        raise FeatherError(
            f"{folder} records no held-out photos (figures.json 'split'): a feather measured on training photos "
            "would flatter the model. Fit it on weights released from a run with a held-out split"
        )
    iterations = DEFAULT_ITERATIONS if iterations is None else iterations
    cpu0, wall0 = time.process_time(), time.perf_counter()
    measured = measure(model, val, judge, candidates, photos, iterations, progress)
    chosen = choose(measured["results"], tolerance)
    record = {
        "date": date.today().isoformat(),
        "chosen_px": chosen,
        "candidates_px": candidates,
        "tolerance": tolerance,
        "rule": "best mean PSNR over the mask kinds among candidates whose mean judge top-1 is at most the tolerance "
        "below the unfeathered paste's",
        "held_out_photos": measured["photos"],
        "iterations": iterations,
        "judge": Path(judge_path).name,
        "judge_top1_real": judge.config.training.get("val_top1"),
        "results": {f"{f:g}": r for f, r in measured["results"].items()},
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "threads": torch.get_num_threads(),
    }
    store(model, folder, record)
    return record


def store(model, folder: Path, record: dict) -> None:
    """Write the record's feather into config.json (files unchanged), figures.json and the card."""
    model.write_config(folder, dict(model.read_config(folder).files), inpaint_feather=float(record["chosen_px"]))
    put_record(folder, "inpaint_feather", record, "feather", card_section(record))


def card_section(record: dict) -> str:
    rows = [
        f"| {f} | "
        + " | ".join(f"{r[k]['psnr_db']:.2f} dB / {r[k]['judge_top1']:.1%}" for k in MASK_KINDS)
        + f" | {r['mean_psnr_db']:.2f} dB / {r['mean_judge_top1']:.1%} |"
        for f, r in record["results"].items()
    ]
    chosen = record["chosen_px"]
    verdict = (
        f"**{chosen:g} model pixels** were kept: the best mean PSNR among the feathers that keep the mean judge top-1 "
        f"within {record['tolerance'] * 100:.1f} percentage points of the paste without feather"
        if chosen
        else "**No feather** was kept: every feather cost more than "
        f"{record['tolerance'] * 100:.1f} percentage points of the judge's mean top-1 or did not raise PSNR"
    )
    carried = (
        f" Carried over from earlier networks on {record['carried_over']}, not re-measured."
        if record.get("carried_over")
        else ""
    )
    return (
        "## Inpainting feather\n\n"
        "The inpainting pastes the photo's own smooth fill of the hole plus the model's detail; with a feather the "
        "detail fades in over that many model pixels from the hole's rim (`cvaegan fit-feather`, "
        f"{record['date']}). Measured on {record['held_out_photos']} held-out photos (not the ones above) with the "
        f"true class and {record['iterations']} iterations, PSNR in the hole / the judge's top-1 on the results:\n\n"
        "| feather (model px) | 25% box | thin strokes | free-form brush | mean |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n{verdict}.{carried}\n"
    )


def carry_over(model, folder: str | os.PathLike, record: dict) -> dict:
    """Write a feather measured on the weights released before into the freshly released FOLDER (when no judge was
    at hand to measure it again), marked as carried over."""
    record = {**record, "carried_over": date.today().isoformat()}
    store(model, Path(folder), record)
    return record
