"""The release gate: `release --judge J --only-if-better` replaces the weights in OUT only when an independent
judge says the candidate is better.

Both models (the run's checkpoint as it would ship, and the weights in OUT) are measured the same way: the
same classes (those both have, found in the judge by class folder name, never by index, so a judge trained
on more classes than the models works), the same seeds (evaluate.FIRST_SEED + i), the same held-out photos.
The figures are evaluate.py's: the judge's top-1 on generated samples, FID in the judge's feature space
against the held-out photos (evaluate.fid_kid) and reconstruction PSNR of the held-out photos
(evaluate.psnr_ssim). The candidate passes when its top-1 is higher by a margin the sample size can tell
from chance, and its FID is at most `fid_tolerance` times the released one's; a folder without weights yet
always passes.

The margin: both models draw the same (class, seed) pairs, so their hits are paired. Of the pairs where
exactly one model's sample is recognised, the candidate must win clearly more: McNemar's statistic
z = (b - c) / sqrt(b + c) >= `min_z` (b: recognised for the candidate only, c: for the released only;
1.64 is one-sided 95%). A 0.1-point lead on 1,020 samples (the flowers gate of 2026-11-23) is a tie.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import inference as I
from .data import LabelledImages, load_images
from .errors import CVAEGANError, InputError
from .evaluate import (
    FIRST_SEED,
    MIN_Z,
    PRDC_MIN_IMAGES,
    feature_spread,
    fid_kid,
    mcnemar,
    prdc_metrics,
    psnr_ssim,
    require_libraries,
)
from .images import uint8_to_float
from .judge import Judge, predict
from .models import CVAEGAN
from .seeds import z_from_seeds
from .serialization import CONFIG_NAME, WeightsError

GATE_FILE = "gate.json"
RULE = (
    "candidate judge top-1 > released judge top-1, with McNemar's z = (b - c) / sqrt(b + c) >= {min_z:g} over the "
    "paired samples, and candidate FID <= {tol:g} x released FID"
)


class GateRefused(CVAEGANError):
    """The candidate is not better than the released weights; OUT was left as it was (the command line
    exits with cli.REFUSED_EXIT)."""

    def __init__(self, comparison: dict):
        super().__init__(f"not released: {comparison['reason']}")
        self.comparison = comparison


@torch.no_grad()
def judge_scores(
    model: CVAEGAN,
    judge: Judge,
    data: LabelledImages,
    val_idx: torch.Tensor,
    folders: list[str],
    samples_per_class: int = 10,
    first_seed: int = FIRST_SEED,
) -> dict:
    """The judge's top-1 on generated samples, FID (judge features) of the samples against the held-out
    photos, and E->G reconstruction PSNR of those photos, over the classes `folders`; also, reported and not part
    of the rule, the judge-feature spread within a class (evaluate.feature_spread) of the samples and of those
    photos, and the samples' precision and recall against those photos in judge features (evaluate.prdc_metrics,
    k = 5: precision, how many samples lie among the photos; recall, how much of the photos' spread the samples
    reach; FID counts both, so a model with recall to gain is refused on FID even when its top-1 is level).
    "hits" is a string with one character per sample ("1" recognised, "0" not), for the paired test in decide().

    Classes are matched by folder name between the model, the judge and `data` (all of the data's classes,
    at the model's resolution); val_idx: the held-out photos, indices into data. Class k of `folders` gets
    the seeds first_seed + k * samples_per_class + j, so two models measured on the same folders see the
    same z."""
    require_libraries()
    if samples_per_class < 1:
        raise InputError("samples per class must be at least 1")
    m_idx = {f: i for i, f in enumerate(model.config.class_folders)}
    j_idx = {f: i for i, f in enumerate(judge.config.class_folders)}
    d_idx = {f: i for i, f in enumerate(data.class_folders)}
    missing = [f for f in folders if f not in m_idx or f not in j_idx or f not in d_idx]
    if missing or not folders:
        raise InputError(f"classes missing from the model, the judge or the data: {missing[:5] or 'all'}")
    c_model = torch.tensor([m_idx[f] for f in folders]).repeat_interleave(samples_per_class)
    c_judge = torch.tensor([j_idx[f] for f in folders]).repeat_interleave(samples_per_class)
    seeds = [first_seed + i for i in range(len(c_model))]
    fake = I.generate(model, z_from_seeds(seeds, model.config.z_dim), c_model, batch_size=64)
    logits, feats = predict(judge, fake)
    hit = logits.argmax(1) == c_judge
    top1 = hit.float().mean().item()

    # held-out photos of these classes, labelled with the model's class index
    lut = torch.full((data.num_classes,), -1, dtype=torch.long)
    lut[[d_idx[f] for f in folders]] = torch.tensor([m_idx[f] for f in folders])
    val_idx = val_idx[lut[data.labels[val_idx]] >= 0]
    if len(val_idx) < 2:
        raise InputError(f"only {len(val_idx)} held-out photo(s) of the compared classes; FID needs at least 2")
    real, labels = uint8_to_float(data.images[val_idx]), lut[data.labels[val_idx]]
    feats_real = predict(judge, real)[1]  # each image set goes through the judge once
    fid = fid_kid(feats_real, feats, kid=False)["fid"]
    # reported, not part of the rule: too few images for k-nearest-neighbour radii leave them unmeasured
    pr = prdc_metrics(feats_real, feats) if min(len(feats_real), len(feats)) >= PRDC_MIN_IMAGES else None
    db = psnr_ssim(I.reconstruct_batch(model, real, labels), real)[0]
    return {
        "judge_top1": round(top1, 5),
        "fid": round(fid, 4),
        "judge_spread": round(feature_spread(feats, c_model), 4),
        "judge_spread_real": round(feature_spread(feats_real, labels), 4),
        "judge_precision": round(pr["precision"], 4) if pr else None,
        "judge_recall": round(pr["recall"], 4) if pr else None,
        "recon_psnr_db": round(db.mean().item(), 3),
        "samples": len(seeds),
        "real_images": len(val_idx),
        "hits": "".join("1" if h else "0" for h in hit.tolist()),
    }


def paired(candidate: dict, released: dict) -> dict:
    """McNemar's counts over the samples both models drew from the same (class, seed): b recognised for the
    candidate only, c for the released only, z = (b - c) / sqrt(b + c) (0 when no pair differs)."""
    b, c, z = mcnemar(candidate["hits"], released["hits"])
    return {"candidate_only": b, "released_only": c, "z": z}


def decide(
    candidate: dict, released: dict | None, fid_tolerance: float = 1.1, min_z: float = MIN_Z, pairs: dict | None = None
) -> tuple[bool, str]:
    """(passed, why) for two judge_scores results; released None: OUT holds no weights yet. pairs: their
    paired() counts, if already taken."""
    if released is None:
        return True, "the output folder holds no weights yet"
    c1, r1, cf, rf = candidate["judge_top1"], released["judge_top1"], candidate["fid"], released["fid"]
    p = pairs or paired(candidate, released)
    better = c1 > r1 and p["z"] >= min_z
    close = cf <= fid_tolerance * rf
    why = (
        f"judge top-1 {c1:.2%} {'>' if c1 > r1 else '<='} {r1:.2%} (released); "
        f"{p['candidate_only']} samples recognised for the candidate only, {p['released_only']} for the released "
        f"only: z = {p['z']:.2f} {'>=' if p['z'] >= min_z else '<'} {min_z:g}"
        f"{'' if better else ' (not clearly better)'}; "
        f"FID {cf:.2f} {'<=' if close else '>'} {fid_tolerance:g} x {rf:.2f} = {fid_tolerance * rf:.2f}"
    )
    return better and close, why


def released_model(out: Path, device: str | torch.device = "cpu") -> CVAEGAN | None:
    """The weights currently in OUT, or None when OUT holds none (no config.json)."""
    from .hub import load_folder

    if not (out / CONFIG_NAME).is_file():
        return None
    try:
        return load_folder(out, device)
    except WeightsError as e:
        raise InputError(
            f"cannot load the weights in {out} to compare the candidate with ({e}); "
            "move them away, or release without --judge"
        ) from e


def compare(
    candidate: CVAEGAN,
    out: str | os.PathLike,
    judge: Judge,
    judge_dir: str | os.PathLike,
    data: LabelledImages,
    val_idx: torch.Tensor,
    data_path: str | os.PathLike,
    samples_per_class: int = 10,
    fid_tolerance: float = 1.1,
    held_out: bool = True,
    min_z: float = MIN_Z,
    first_seed: int = FIRST_SEED,
) -> dict:
    """Measure the candidate and the weights in OUT (if any) with the judge and decide (see the module's
    docstring). data: all classes of the data set at the candidate's resolution; val_idx: held-out photos.

    first_seed: the samples' seeds start there (judge_scores). The default is the one every gate and model card
    uses; a candidate picked as the best of several gated snapshots is best confirmed on seeds it was not picked
    on (say 30,000 on: the default gate and the card use 20,000 to about 21,000), since on the seeds it was
    picked on its lead is partly the luck of those seeds."""
    if judge.config.targets:
        raise InputError("--judge: this is an attribute judge; the gate needs a class judge (`cvaegan judge`)")
    if fid_tolerance < 1:
        raise InputError(f"--fid-tolerance must be at least 1, got {fid_tolerance:g}")
    if min_z < 0:
        raise InputError(f"--min-z must be at least 0, got {min_z:g}")
    if first_seed < 0:
        raise InputError(f"--gate-first-seed must be at least 0, got {first_seed}")
    out = Path(out)
    released = released_model(out)
    in_judge, in_data = set(judge.config.class_folders), set(data.class_folders)
    theirs = set(released.config.class_folders) if released is not None else None
    folders = [
        f for f in candidate.config.class_folders if f in in_judge and f in in_data and (theirs is None or f in theirs)
    ]
    if not folders:
        raise InputError(
            f"--judge {judge_dir}: no class folder is shared by the candidate, the weights in {out} and the judge; "
            "use a judge trained on this data set (`cvaegan judge --data ...`)"
        )
    cand = judge_scores(candidate, judge, data, val_idx, folders, samples_per_class, first_seed)
    rel = None
    if released is not None:
        res = released.config.resolution
        rdata = data if res == data.images.shape[-1] else load_images(data_path, res, progress=False)
        rel = judge_scores(released, judge, rdata, val_idx, folders, samples_per_class, first_seed)
    pairs = paired(cand, rel) if rel is not None else None
    passed, why = decide(cand, rel, fid_tolerance, min_z, pairs)
    for s in (cand, rel):  # the per-sample hits are summed up in "paired"
        if s is not None:
            s.pop("hits", None)
    return {
        "passed": passed,
        "reason": why,
        "rule": RULE.format(tol=fid_tolerance, min_z=min_z),
        "fid_tolerance": fid_tolerance,
        "min_z": min_z,
        "paired": pairs,
        "judge": {
            "folder": str(judge_dir),
            "classes": judge.config.num_classes,
            "resolution": judge.config.resolution,
            "sha256": str(judge.config.files.get("judge.safetensors", ""))[:12],
            "real_top1": judge.config.training.get("val_top1"),  # on its held-out photos: the ceiling
        },
        "classes": len(folders),
        "candidate_classes_not_compared": [f for f in candidate.config.class_folders if f not in set(folders)],
        "samples_per_class": samples_per_class,
        "first_seed": first_seed,
        "held_out": held_out,
        "candidate": cand,
        "released": rel,
        "out": str(out),
    }


def write_comparison(comparison: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(comparison, indent=1) + "\n")
    return path


def table(comparison: dict) -> str:
    """A small text table of a comparison, for the terminal."""
    c, r = comparison["candidate"], comparison["released"]
    photos = "held-out photos" if comparison.get("held_out", True) else "photos (the run kept no held-out split)"
    lines = [
        f"release gate: {comparison['samples_per_class']} samples x {comparison['classes']} classes per model "
        f"(seeds from {comparison['first_seed']:,}), "
        f"FID against {c['real_images']:,} {photos}, judge {comparison['judge']['folder']}",
        f"{'':<10} {'judge top-1':>12} {'FID (judge)':>12} {'recon PSNR':>11} {'spread':>7} {'precision':>9} "
        f"{'recall':>7}",
    ]
    for name, s in (("candidate", c), ("released", r)):
        if s is None:
            lines.append(f"{name:<10} {'-':>12} {'-':>12} {'-':>11} {'-':>7} {'-':>9} {'-':>7}")
        else:
            extra = " ".join(  # "-" in comparisons older than the figure
                f"{s[key]:>{w}.3f}" if s.get(key) is not None else f"{'-':>{w}}"
                for key, w in (("judge_spread", 7), ("judge_precision", 9), ("judge_recall", 7))
            )
            lines.append(f"{name:<10} {s['judge_top1']:>12.2%} {s['fid']:>12.2f} {s['recon_psnr_db']:>8.2f} dB {extra}")
    real = (c or {}).get("judge_spread_real")
    if real is not None:
        lines.append(f"spread: the judge-feature spread within a class (0 = all alike); the photos' is {real:.3f}")
    if (c or {}).get("judge_recall") is not None:
        lines.append(
            "precision / recall: of the samples among the photos / of the photos reached by the samples (k = 5)"
        )
    lines.append(f"{'passed' if comparison['passed'] else 'refused'}: {comparison['reason']}")
    return "\n".join(lines)
