"""A class guesser for the inpainting's "auto" mode, trained beside a released weights folder.

When no class is given, inpainting names it from the photo with its hole filled smoothly. C, trained with E, G and
D as the paper says, learns the training photos by heart: on flowers release v6 it names 42.8% of held-out photos
and 24.8% of them with the card's 25% centre box missing, so the "auto" fill paints another species into the hole
more often than not. Refitting C itself breaks enrolment (`cvaegan.refit`). `fit_guesser` trains a separate small
classifier instead: the judge's residual network (`cvaegan.judge`), narrower, on the weights' training photos with
the judge's strong augmentation plus a random square hole filled smoothly in half of them (`judge.holes_augment_batch`),
and ships it in the weights folder as guesser.safetensors (float16) described by config.json's `guesser` entry.
Inpainting asks it instead of C (`inference.guess_probabilities`); everything else that asks C (enrolment,
reconstruction, the C figures) is unchanged, and so are E, G, D and every sample. Not in the paper.

It has the judge's architecture but its own seed and widths and never sees a held-out photo; the judge that scores
the inpainted photos was trained without holes. Both learn from the same photos, so their mistakes may agree more
than C's and the judge's do: the card's PSNR figures do not depend on the judge at all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from . import inference as I
from .card import put_record
from .errors import InputError
from .evaluate import (
    CARD_INPAINT_PHOTOS as CARD_PHOTOS,
    box_layout,
    inpaint_photo_order,
    make_mask,
)
from .gate import MIN_Z, paired
from .images import uint8_to_float
from .judge import HOLE_SHARE, HOLE_SIDES, load_judge, train_judge
from .models import CVAEGAN, GUESSER_NAME, build_guesser
from .refit import load_with_photos, read_figures
from .serialization import WeightsError, float16_state, load_state_strict, load_tensors, save_tensors, verify_files

EPOCHS = 60
WIDTHS = (24, 48, 96, 192)  # the judge's (32, 64, 128, 256) narrowed: about 1.4 MB in float16
SEED = 11
SPLIT_FRACTION = 0.1  # the judge's held-out share (train_judge), which the weights' must equal


class GuesserError(InputError):
    """A guesser cannot be fitted or stored as asked; the message says why and what to do."""


def check_settings(epochs: int, widths) -> list[int]:
    """The widths as a list of ints; GuesserError unless epochs >= 1 and there are 1-6 positive widths."""
    try:
        w = [int(v) for v in widths]
    except (TypeError, ValueError) as e:
        raise GuesserError(f"--widths must be whole numbers such as 24,48,96,192 ({e})") from e
    if epochs < 1 or not 1 <= len(w) <= 6 or min(w) < 1:
        raise GuesserError(
            f"need --epochs >= 1 and 1 to 6 positive --widths (e.g. --epochs 60 --widths 24,48,96,192); got "
            f"{epochs} and {','.join(map(str, w))}"
        )
    odd = [v for v in w if v % min(8, v)]  # GroupNorm: 8 groups, or one per channel below 8 channels
    if odd:
        raise GuesserError(
            f"--widths of 8 or more must be multiples of 8 (the network normalises 8 groups of channels); "
            f"{', '.join(map(str, odd))} is not: try e.g. 16,32,80,160"
        )
    return w


MIX = (0.0, 0.25, 0.5, 0.75, 1.0)  # the guesser's share w of the "auto" guess p_guesser^w * p_C^(1 - w)
MIX_VIEWS = ("whole", "box25", "brush", "brush_thin")  # photos whole, and with the card's holes filled smoothly
MIN_MIX_PHOTOS = 16  # fewer held-out photos beyond the card's: the guesser guesses alone (w = 1), unmeasured


@torch.no_grad()
def _log_probs(net, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([net(x[i : i + 256].to(dev))[0].float().log_softmax(1).cpu() for i in range(0, len(x), 256)])


def mix_table(
    model: CVAEGAN, guesser, x: torch.Tensor, labels: torch.Tensor, weights=MIX, views=MIX_VIEWS, hits=None
) -> dict[str, dict[str, float]]:
    """Top-1 of the guess p_guesser^w * p_C^(1 - w) (`inference.guess_probabilities`) for each w in `weights` on
    held-out photos x (float, [-1, 1]; labels: the model's class indices), whole and with each of the card's hole
    kinds filled smoothly, as the inpainting sees them: {f"{w:g}": {view: top-1, ..., "mean": over the views}}.
    w = 0 is C alone (no guesser needed), w = 1 the guesser alone. `hits` (a dict) receives, per w, a string of
    "1"/"0" for every (view, photo): right or wrong, for paired tests (`gate.paired`)."""
    r, layout = model.config.resolution, box_layout(model.config.class_folders)
    table: dict[str, dict[str, float]] = {f"{w:g}": {} for w in weights}
    for view in views:
        if view == "whole":
            images = x
        else:
            m = torch.cat([make_mask(view, r, i, layout) for i in range(len(x))])
            images = torch.cat([I.fill_smooth(x[i : i + 256], m[i : i + 256]) for i in range(0, len(x), 256)])
        c = _log_probs(model.classifier, images)
        g = _log_probs(guesser, images) if any(w > 0 for w in weights) else None
        k = c.shape[1] if g is None else g.shape[1]
        for w in weights:
            mixed = c[:, :k] if w == 0 else w * g + (1 - w) * c[:, :k]
            right = mixed.argmax(1) == labels
            table[f"{w:g}"][view] = round(right.float().mean().item(), 4)
            if hits is not None:
                hits[f"{w:g}"] = hits.get(f"{w:g}", "") + "".join("1" if h else "0" for h in right.tolist())
    for row in table.values():
        row["mean"] = round(sum(row[v] for v in views) / len(views), 4)
    return table


def card_section(record: dict) -> str:
    c, g = record.get("c_top1"), record.get("guesser_top1")
    measured = (
        f"On the {record['held_out_images']} held-out photos the guesser alone names the class of the whole photo "
        f"{g['whole']:.1%} of the time (C: {c['whole']:.1%}) and with the 25% box filled smoothly, as the "
        f'inpainting\'s "auto" mode sees it, {g["box25"]:.1%} (C: {c["box25"]:.1%}).'
        if c and g
        else "No held-out photos recorded for these weights: the guesser was not measured."
    )
    mix, w = record.get("mix"), record.get("weight", 1.0)
    if mix:
        t = mix["top1"]
        mixed = (
            f" The \"auto\" guess multiplies the guesser's probabilities raised to the power w by C's raised to 1 - w: "
            f"w = {w:g}, of {', '.join(t)} the one right most often among the guesser alone and the shares that beat it "
            f"by McNemar's test (z >= {MIN_Z}) on {mix['photos']} other held-out photos (not the card's inpainting "
            "photos), whole and with the 25% box, brush and thin strokes filled smoothly (mean top-1: C "
            f"alone {t['0']['mean']:.1%}, the guesser alone {t['1']['mean']:.1%}, w = {w:g} {t[f'{w:g}']['mean']:.1%})."
        )
    else:
        mixed = ' The "auto" guess is the guesser\'s alone (its share against C was not measured).'
    kept = (
        f" Kept from the weights released before (it learned the photos, not the networks); its figures and its share "
        f"were measured again with these networks on {record['carried_over']}."
        if record.get("carried_over")
        else ""
    )
    who = {
        "the class guesser": "asks a separate class guesser",
        "C": "asks C: the separate class guesser fitted for it lost to C",
        "C and the class guesser": "asks C and a separate class guesser together",
    }[I.share_source(w if mix else 1.0)]
    return (
        f"## Class guesser\n\nInpainting without a chosen class {who} "
        f"({record['date']}, `cvaegan fit-guesser`): the judge's residual network with widths "
        f"{', '.join(map(str, record['widths']))} ({record['bytes'] / 2**20:.1f} MiB in float16), trained from scratch for "
        f"{record['epochs']} epochs on {record['train_images']:,} training photos with flips, shifts, zoom, random "
        f"erasing and a random square hole filled smoothly in half of them; {record['wall_s'] / 60:.1f} wall minutes "
        f"with {record['threads']} thread(s). {measured}{mixed}{kept} The guesser changes none of E, G, C and D: "
        "samples, enrolment and every other figure are the networks' own.\n"
    )


def fit_guesser(
    folder: str | os.PathLike,
    data_path: str | os.PathLike,
    epochs: int = EPOCHS,
    widths=WIDTHS,
    seed: int = SEED,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Train a class guesser for the weights folder FOLDER on DATA (the data it was trained on) and add it in place:
    guesser.safetensors, config.json's `guesser` entry and digest, figures.json's "guesser" record and the card's
    "Class guesser" section (a guesser there already is replaced). Nothing is written until it has trained and
    the folder is known to stay within the release size limits. Returns the record."""
    from .release import MAX_FILE_BYTES, MAX_FOLDER_BYTES, check_folder_size

    widths = check_settings(epochs, widths)  # before anything loads: a typo fails at once
    folder = Path(folder)
    figures = read_figures(folder)
    fraction = float(figures.get("val_fraction") or SPLIT_FRACTION)
    if figures.get("split") == "held-out" and not math.isclose(fraction, SPLIT_FRACTION):
        raise GuesserError(
            f"{folder} holds out {fraction:g} of the photos; the guesser holds out {SPLIT_FRACTION:g} and would train on "
            "photos the weights were measured on. Fit it on weights trained with --val-fraction 0.1"
        )
    model, data, _, val, _ = load_with_photos(
        folder, data_path, device, progress, "the guesser would not know them", GuesserError
    )
    threads = torch.get_num_threads()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        jcfg = train_judge(
            data,
            tmp,
            epochs=epochs,
            widths=widths,
            seed=seed,
            augment="holes",
            classes=list(model.config.class_folders),
            progress=progress,
            device=device,
        )
        guesser = load_judge(tmp, device)
    state = float16_state(guesser)
    size = sum(t.numel() * t.element_size() for t in state.values())
    current = check_folder_size(folder) - (
        (folder / GUESSER_NAME).stat().st_size if (folder / GUESSER_NAME).is_file() else 0
    )
    if current + size > MAX_FOLDER_BYTES or size > MAX_FILE_BYTES:
        raise GuesserError(
            f"{folder} holds {current / 2**20:.1f} MiB; a guesser of {size / 2**20:.1f} MiB would take it over the "
            f"{MAX_FOLDER_BYTES / 2**20:.0f} MiB a weights folder may hold. Try narrower --widths (now "
            f"{','.join(map(str, widths))}); the folder was left as it was"
        )
    record = {
        "date": date.today().isoformat(),
        "epochs": epochs,
        "widths": widths,
        "stem_stride": jcfg.stem_stride,
        "seed": seed,
        "augmentation": "the judge's strong augmentation plus a random square hole filled smoothly",
        "hole_share": HOLE_SHARE,
        "hole_sides": list(HOLE_SIDES),
        "train_images": jcfg.training["train_images"],
        "images_seen": jcfg.training["train_images"] * epochs,
        "wall_s": jcfg.training["wall_s"],
        "cpu_s": round(time.process_time() - cpu0, 1),
        "threads": threads,
        "bytes": size,
        "held_out_images": len(val.labels) if val is not None else 0,
        "c_top1": None,
        "guesser_top1": None,
    }
    _measure(model, guesser, val, record)
    _store(model, folder, state, record)
    return record


def measure_mix(
    folder: str | os.PathLike, data_path: str | os.PathLike, device: str = "cpu", progress: bool = True
) -> dict:
    """Measure again, without training, the share of the "auto" guess that the weights folder FOLDER's guesser gets
    against C (`_measure`), e.g. for a guesser fitted before that share was measured: config.json's entry,
    figures.json's record and the card's section are rewritten; guesser.safetensors stays as it is."""
    folder = Path(folder)
    record = read_figures(folder).get("guesser")
    if not record or not CVAEGAN.read_config(folder).guesser:  # before the data loads
        raise GuesserError(
            f"{folder} has no class guesser with a figures.json record: fit one (`cvaegan fit-guesser` without "
            "--mix-only)"
        )
    model, _, _, val, _ = load_with_photos(
        folder, data_path, device, progress, "the guesser would not know them", GuesserError
    )
    if val is None:
        raise GuesserError(f"{folder} records no held-out photos to measure the guess on (figures.json 'split')")
    record = {**record, "mix_measured": date.today().isoformat()}
    _measure(model, model.guesser, val, record)
    _store(model, folder, None, record)
    return record


def _measure(model: CVAEGAN, guesser, val, record: dict) -> None:
    """Give `model` the `guesser`; with held-out photos `val` (the model's class indices) record C's and the
    guesser's top-1 on all of them (whole and with the 25% box) and choose the guesser's share w of the "auto"
    guess, on the held-out photos after the card's (`evaluate.inpaint_photo_order`, so the card's inpainting figures
    stay a fair test): the best mean top-1 of `mix_table` among w = 1 (the guesser alone) and the shares that beat it
    by McNemar's test over every (view, photo) (z >= gate.MIN_Z): C joins the guess only when it clearly helps.
    Without enough of those photos w stays 1."""
    model.guesser = guesser
    record["weight"], record["mix"] = 1.0, None
    if val is None or not len(val.labels):
        return
    x = uint8_to_float(val.images)
    both = mix_table(model, guesser, x, val.labels, (0.0, 1.0), ("whole", "box25"))
    record["c_top1"], record["guesser_top1"] = ({v: both[w][v] for v in ("whole", "box25")} for w in ("0", "1"))
    record["held_out_images"] = len(val.labels)
    order = inpaint_photo_order(len(val.labels))[CARD_PHOTOS:]
    if len(order) < MIN_MIX_PHOTOS:
        return
    hits: dict[str, str] = {}
    table = mix_table(model, guesser, x[order], val.labels[order], hits=hits)
    z = {w: paired({"hits": hits[w]}, {"hits": hits["1"]})["z"] for w in table if w != "1"}
    eligible = ["1"] + [w for w in z if z[w] >= MIN_Z]  # C joins the guess only when it clearly helps
    record["weight"] = float(max(eligible, key=lambda w: (table[w]["mean"], float(w))))
    record["mix"] = {
        "photos": len(order),
        "views": list(MIX_VIEWS),
        "top1": table,
        "z_against_the_guesser_alone": z,
        "date": date.today().isoformat(),
    }


def _store(model: CVAEGAN, folder: Path, state: dict | None, record: dict) -> None:
    """Write the guesser (state None: the file there stays), its config entry, figures.json record and card section."""
    from . import __version__

    files = dict(model.read_config(folder).files)
    if state is not None:
        meta = {"format": "pt", "network": "guesser", "cvaegan": __version__}
        files[GUESSER_NAME] = save_tensors(state, folder / GUESSER_NAME, meta)
    entry = {k: record[k] for k in ("widths", "stem_stride", "epochs", "seed", "date", "train_images")}
    entry["num_classes"] = model.guesser.fc.out_features  # the classes it was fitted on (later ones: C guesses)
    entry["held_out_top1"] = record["guesser_top1"]
    entry["weight"] = record.get("weight", 1.0)
    model.write_config(folder, files, guesser=entry)
    put_record(folder, "guesser", record, "guesser", card_section(record))


def read_guesser(folder: str | os.PathLike, class_folders: list[str]) -> dict | None:
    """The class guesser of the weights folder FOLDER, when it has one (intact, with its figures.json record) for
    exactly `class_folders`: {"state", "record"}, for `reattach` after a release replaced the folder's networks
    (the guesser learned the photos, not the networks, so it stays valid for the same classes). Otherwise None."""
    folder = Path(folder)
    try:
        cfg = CVAEGAN.read_config(folder)
        if not cfg.guesser or cfg.class_folders != list(class_folders) or GUESSER_NAME not in cfg.files:
            return None
        verify_files(folder, {GUESSER_NAME: cfg.files[GUESSER_NAME]}, "")
        record = read_figures(folder).get("guesser")
        return {"state": load_tensors(folder / GUESSER_NAME), "record": record} if record else None
    except (WeightsError, InputError, OSError):
        return None


def reattach(model: CVAEGAN, folder: str | os.PathLike, kept: dict, val=None) -> dict:
    """Put a guesser `read_guesser` kept back into the freshly released weights folder FOLDER (whose `model` is
    loaded): its file, config entry, figures.json record and card section, with C's figures and its own
    re-measured on `val` (the release's held-out photos, labelled with the model's class indices) when given."""
    folder = Path(folder)
    record = {**kept["record"], "carried_over": date.today().isoformat()}
    shape = {"widths": record["widths"], "stem_stride": record["stem_stride"], "num_classes": model.config.num_classes}
    guesser = build_guesser(dataclasses.replace(model.config, guesser=shape))
    load_state_strict(guesser, kept["state"], f"{folder / GUESSER_NAME} (kept from the weights released before)")
    _measure(model, guesser, val, record)
    _store(model, folder, kept["state"], record)
    return record
