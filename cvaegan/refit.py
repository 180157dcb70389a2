"""Refit C alone on a released weights folder, so that its guess of the class survives a hole in the photo.

C is trained with E, G and D as the paper says (cross-entropy on real photos), and in our recipe it learns the
training photos by heart: on the flowers release v6 weights C names 42.8% of held-out photos and only 24.8% of
them with the centre box missing (filled smoothly, as the app's "auto" guess sees them), while the independent
judge, trained with augmentation, names 76.3% of whole photos. The inpainting "auto" mode starts from C's guess,
so a wrong guess paints another species into the hole.

`refit_classifier` trains C on its own, on the weights' training photos only, with what the judge's recipe uses
(flips, shifts, zoom; label smoothing 0.1) plus random square holes (side 1/4 to 5/8 of the image, on half of the
photos) filled by the harmonic interpolation the inpainting pipeline uses. E, G and D are not touched, so samples,
reconstructions and the judge's figures on samples stay exactly as they were; what changes is everything that asks
C: the "auto" class guess (inpainting, reconstruct), enrolment's identity term and starting class, and the C figures
of the model card. Not in the paper: an option, run after training (`cvaegan refit-classifier`).

It breaks enrolment: G learned to produce what the trained C's features describe, and enrolment pulls a new class's
samples towards C's features of its photos. On birds release v4 a refitted C took the 5 held-out species from 34.8%
to 10.8% (judge top-1; 0.61x -> 0.19x of the trained species), and the "auto" inpainting did not gain on the card's
photos either (14.93 -> 14.73 dB); on flowers release v6 the guess gained (box inpainting with C's guess 14.50 ->
14.72 dB, judge 46.9% -> 53.1%). The bundled weights keep their trained C (README, Evaluation).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import inference as I
from .card import put_record
from .data import LabelledImages, load_images, split_indices
from .errors import InputError
from .evaluate import box_layout, make_mask
from .images import uint8_to_float
from .judge import HOLE_SIDES, JudgeError, keep_classes, random_holes, strong_augment_batch
from .models import CVAEGAN
from .serialization import float16_state, save_tensors

ENROLMENT_WARNING = (
    "enrolment (`cvaegan enrol`, the app's 'Add a new person or species') relies on the trained C's features: with a "
    "refitted C, birds release v4's held-out species fell from 34.8% to 10.8% judge top-1; do not refit weights you "
    "will enrol new classes into"
)

EPOCHS = 10
LR = 1e-4  # Adam, betas (0.5, 0.999) as in training
HOLE_P = 0.5  # share of each batch given a random hole
SMOOTHING = 0.1
BATCH = 64
CLASSIFIER_FILE = "classifier.safetensors"


class RefitError(InputError):
    """Arguments or data the classifier refit cannot use; the message says why and what to do."""


def check_settings(epochs: int, lr: float, hole_p: float, smoothing: float = SMOOTHING, batch: int = BATCH) -> None:
    """RefitError unless epochs >= 1, batch >= 1, lr > 0 (finite), hole_p in [0, 1] and smoothing in [0, 1)."""
    if epochs < 1 or batch < 1 or not (lr > 0 and math.isfinite(lr)) or not 0 <= hole_p <= 1:
        raise RefitError(
            f"need epochs >= 1, batch >= 1, lr > 0 and hole_p in [0, 1] (--epochs, --lr, --hole-share; got "
            f"{epochs}, {batch}, {lr:g}, {hole_p:g})"
        )
    if not 0 <= smoothing < 1:
        raise RefitError(f"label smoothing must be in [0, 1), got {smoothing}")


@torch.no_grad()
def classifier_top1(model: CVAEGAN, x: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """C's top-1 on images x (float, [-1, 1]) against labels (model class indices), `inference.classify` in chunks."""
    pred = torch.cat([I.classify(model, x[i : i + batch])[0] for i in range(0, len(x), batch)])
    return round((pred == labels).float().mean().item(), 4)


def _held_out_figures(model: CVAEGAN, val: LabelledImages, layout: str) -> dict:
    x = uint8_to_float(val.images)
    r = model.config.resolution
    box = make_mask("box25", r, 0, layout).expand(len(x), 1, r, r)
    return {
        "whole": classifier_top1(model, x, val.labels),
        "box25": classifier_top1(model, I.fill_smooth(x, box), val.labels),
    }


def refit_classifier(
    model: CVAEGAN,
    train: LabelledImages,
    val: LabelledImages | None = None,
    epochs: int = EPOCHS,
    lr: float = LR,
    hole_p: float = HOLE_P,
    smoothing: float = SMOOTHING,
    batch: int = BATCH,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train model.classifier alone on `train` (labels = the model's class indices) for `epochs`; E, G and D are
    not touched. With `val`, C's top-1 on it, whole and with the 25% box (harmonic fill), before and after.
    Returns the record (settings, figures, time); the model's C is left in eval mode. Deterministic for a seed."""
    check_settings(epochs, lr, hole_p, smoothing, batch)
    n = len(train.labels)
    if n < 2:
        raise RefitError(f"{n} training photo(s): C needs at least 2; pass the data the weights were trained on")
    batch = min(batch, n)  # small data: one batch of all photos per step
    layout = box_layout(model.config.class_folders)
    before = _held_out_figures(model, val, layout) if val is not None and len(val.labels) else None
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c = model.classifier
    opt = torch.optim.Adam(c.parameters(), lr=lr, betas=(0.5, 0.999))
    steps_per_epoch = n // batch
    threads = torch.get_num_threads()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=epochs * steps_per_epoch, desc="refit C", unit="step", disable=not progress, dynamic_ncols=True)
    losses = []
    for _ in range(epochs):
        c.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * batch : (s + 1) * batch]
            x = random_holes(strong_augment_batch(uint8_to_float(train.images[idx]), gen), hole_p, gen)
            loss = F.cross_entropy(
                c(x.to(model.device))[0], train.labels[idx].to(model.device), label_smoothing=smoothing
            )
            if not torch.isfinite(loss):
                raise RefitError(f"the loss became {loss.item()}; try a smaller --lr (now {lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    c.eval()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = _held_out_figures(model, val, layout) if before is not None else None
    return {
        "date": date.today().isoformat(),
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "images_seen": epochs * steps_per_epoch * batch,
        "train_images": n,
        "lr": lr,
        "betas": [0.5, 0.999],
        "batch": batch,
        "hole_share": hole_p,
        "hole_sides": list(HOLE_SIDES),
        "label_smoothing": smoothing,
        "augmentation": "flips, shifts, zoom (the judge's strong augmentation)",
        "seed": seed,
        "last_loss": round(sum(losses[-steps_per_epoch:]) / steps_per_epoch, 4),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "threads": threads,
        "held_out_images": len(val.labels) if before is not None else 0,
        "c_top1_before": before,
        "c_top1_after": after,
    }


def weights_split(
    folder: Path, model: CVAEGAN, data: LabelledImages, missing_means: str = "C would forget them"
) -> tuple[LabelledImages, LabelledImages | None, bool]:
    """The weights' training photos and held-out photos (figures.json's split, as release and evaluate draw
    it), relabelled to the model's class indices; the data's folders the model lacks (left out) are dropped."""
    figures = read_figures(folder)
    held_out = figures.get("split") == "held-out"
    train_idx, val_idx = split_indices(data.labels, float(figures.get("val_fraction") or 0.1))
    if not held_out:  # no held-out photos recorded: C trains on all, and is measured on none
        train_idx, val_idx = torch.arange(len(data.labels)), val_idx[:0]
    try:
        kept, train_idx, val_idx = keep_classes(data, model.config.class_folders, train_idx, val_idx)
    except JudgeError as e:
        raise RefitError(f"{e}: {missing_means}. Pass the data the weights were trained on") from e
    return kept.subset(train_idx), (kept.subset(val_idx) if held_out else None), held_out


def load_with_photos(
    folder: Path,
    data_path,
    device: str,
    progress: bool,
    missing_means: str = "C would forget them",
    error: type[InputError] = RefitError,
) -> tuple[CVAEGAN, LabelledImages, LabelledImages, LabelledImages | None, bool]:
    """(the weights folder's model, DATA at its resolution, the weights' training photos, their held-out photos or
    None, whether the split was held out): what a command that fits or measures something on a weights folder's own
    photos starts with. `error` (with the data's path) when DATA holds no readable images; `weights_split`'s error
    when it lacks one of the model's classes."""
    from .hub import load_folder

    model = load_folder(folder, device)
    data = load_images(data_path, model.config.resolution, progress=progress)
    if not len(data.labels):
        raise error(f"{data_path} holds no readable images")
    train, val, held_out = weights_split(folder, model, data, missing_means)
    return model, data, train, val, held_out


def read_figures(folder: Path) -> dict:
    path = folder / "figures.json"
    if not path.is_file():
        return {}
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RefitError(f"{path} is not valid JSON ({e}); restore it (git checkout) or delete it") from e
    return figures if isinstance(figures, dict) else {}


def save_classifier(model: CVAEGAN, folder: str | os.PathLike) -> None:
    """Replace the classifier file of a weights folder (float16, as released) and its digest in config.json;
    every other file stays byte for byte."""
    from . import __version__

    folder = Path(folder)
    files = dict(model.read_config(folder).files)
    state = float16_state(model.classifier)
    meta = {"format": "pt", "network": "classifier", "cvaegan": __version__}
    files[CLASSIFIER_FILE] = save_tensors(state, folder / CLASSIFIER_FILE, meta)
    model.write_config(folder, files)


@torch.no_grad()
def refresh_c_means(model: CVAEGAN, train: LabelledImages, folder: Path, fakes_per_class: int = 32) -> bool:
    """Re-measure the running means of C's features that a weights folder carries for warm starts (L_GC's
    per-class means of real and generated images), with the refitted C: real = the class's training photos,
    generated = `fakes_per_class` samples of G per class (fixed seeds). Returns False when the folder has none."""
    from .hub import RUNNING_MEANS_NAME
    from .seeds import z_from_seeds
    from .serialization import load_tensors

    path = folder / RUNNING_MEANS_NAME
    if not path.is_file():
        return False
    means = load_tensors(path)
    k = model.config.num_classes
    model.classifier.eval()

    def feats(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [model.classifier(x[i : i + 256].to(model.device))[1].float().cpu() for i in range(0, len(x), 256)]
        )

    real = torch.zeros(k, model.config.feature_dim)
    f = feats(uint8_to_float(train.images))
    real.index_add_(0, train.labels, f)
    counts = torch.bincount(train.labels, minlength=k).clamp(min=1)
    classes = torch.arange(k).repeat_interleave(fakes_per_class)
    z = z_from_seeds([30_000 + i for i in range(len(classes))], model.config.z_dim)
    fake = feats(I.generate(model, z, classes, batch_size=64)).view(k, fakes_per_class, -1).mean(1)
    dtype = means["c_real.mean"].dtype
    means["c_real.mean"] = (real / counts[:, None]).to(dtype)
    means["c_fake.mean"] = fake.to(dtype)
    files = dict(model.read_config(folder).files)
    from . import __version__

    meta = {"format": "pt", "cvaegan": __version__}
    files[RUNNING_MEANS_NAME] = save_tensors({n: t.contiguous() for n, t in means.items()}, path, meta)
    model.write_config(folder, files)
    return True


def card_section(record: dict) -> str:
    b, a = record.get("c_top1_before"), record.get("c_top1_after")
    measured = (
        f"C's top-1 on the {record['held_out_images']} held-out photos: whole {b['whole']:.1%} -> {a['whole']:.1%}, "
        f'with the 25% box filled smoothly (what the inpainting\'s "auto" guess sees) {b["box25"]:.1%} -> '
        f"{a['box25']:.1%}."
        if b and a
        else "No held-out photos recorded for these weights: C trained on all of them and was not measured."
    )
    return (
        f"## Classifier refit\n\nC was refitted alone after training ({record['date']}, `cvaegan refit-classifier`): "
        f"{record['epochs']} epochs over {record['train_images']:,} training photos ({record['images_seen']:,} images "
        f"seen), Adam lr {record['lr']:g}, label smoothing {record['label_smoothing']:g}, flips, shifts and zoom, and "
        f"a random square hole filled smoothly in {record['hole_share']:.0%} of the photos; {record['wall_s'] / 60:.1f} "
        f"wall minutes with {record['threads']} thread(s). E, G and D are unchanged: the samples and their judge "
        f"figures are the same. {measured}\n\nWarning: {ENROLMENT_WARNING}.\n"
    )


def refit_folder(
    folder: str | os.PathLike,
    data_path: str | os.PathLike,
    epochs: int = EPOCHS,
    lr: float = LR,
    hole_p: float = HOLE_P,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Refit C of a weights folder in place: classifier.safetensors and config.json's digest, figures.json (the
    record under "classifier_refit"; C's figures re-measured as `release` measures them) and the card's
    "Classifier refit" section. Nothing is written until the refit has finished."""
    from .release import measure

    check_settings(epochs, lr, hole_p)  # before anything loads: a typo fails at once
    folder = Path(folder)
    model, _, train, val, held_out = load_with_photos(folder, data_path, device, progress)
    record = refit_classifier(model, train, val, epochs, lr, hole_p, seed=seed, progress=progress)
    record["held_out"] = held_out
    figures = read_figures(folder)
    save_classifier(model, folder)
    record["running_means_refreshed"] = refresh_c_means(model, train, folder)
    if figures.get("classifier_refit"):
        record["earlier"] = figures["classifier_refit"]  # a second refit keeps the first one's record
    if figures and val is not None:  # C's figures re-measured as release measures them, in figures.json and the card
        measured = measure(model, val, figures.get("generated_per_class", 4))
        figures.update(
            {key: measured[key] for key in ("c_top1_real_val", "c_top1_generated", "c_top1_generated_per_class")}
        )
        (folder / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
        card = folder / "README.md"
        if card.is_file() and figures.get("c_top1_real_val") is not None:
            card.write_text(_card_c_rows(card.read_text(encoding="utf-8"), figures), encoding="utf-8")
    put_record(folder, "classifier_refit", record, "refit", card_section(record))
    return record


def _card_c_rows(text: str, figures: dict) -> str:
    """The card's two rows of C's figures, rewritten with the refit C's."""
    text = re.sub(
        r"^\| C's top-1 on held-out real images \| [^|]* \|$",
        f"| C's top-1 on held-out real images | {figures['c_top1_real_val']:.1%} (refitted C) |",
        text,
        flags=re.M,
    )
    return re.sub(
        r"^(\| C's top-1 on generated samples \([^)]*\) \| )[^|]* \|$",
        lambda m: f"{m.group(1)}{figures['c_top1_generated']:.1%} (refitted C) |",
        text,
        flags=re.M,
    )
