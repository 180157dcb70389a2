"""Enrolment: learn a new class (a person, a species) from a few photos into frozen released weights, and the
small strict class file that carries it (its label embeddings for G and E, its per-layer terms of G's class-conditional
BatchNorms, and its row of C's output layer)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from . import __version__
from .data import IMAGE_EXTENSIONS
from .errors import InputError
from .images import ImageError, fit, make_grid, open_image, pil_to_uint8, uint8_to_float
from .inference import Progress, sample
from .losses import kl_loss, mean_feature_matching, reconstruction_loss
from .models import CVAEGAN
from .seeds import z_from_seeds
from .speed import use_channels_last

MIN_PHOTOS = 3  # fewer photos cannot tell the class from one picture's pose and lighting
MAX_PHOTOS = 50  # more are accepted in batches of BATCH_PHOTOS; enrolment is meant for a handful
BATCH_PHOTOS = 10  # photos per step when more are given
FILE_FORMAT = "cvaegan-classes"  # safetensors metadata "format" of a class file
FILE_VERSION = 2  # bump when the class file layout changes in a way older code cannot read (2: generator_offsets)
FOLDER_PREFIX = "enrolled_"  # class_folders entry of an enrolled class: enrolled_<slug of the name>
NETWORK_FILES = ("encoder.safetensors", "generator.safetensors", "classifier.safetensors")
TENSORS = ("generator_embed", "encoder_embed", "classifier_weight", "classifier_bias")
PRIOR_TENSORS = ("z_mean", "z_std")  # the photo prior; optional (class files written before it lack them)
OFFSET_TENSOR = "generator_offsets"  # per-layer terms of G's class BatchNorms; optional (version 1 files lack it)
# Adam's step size for those terms. With 0 only the embedding rows are learned (as before 2026-12-04). On the faces
# release v5 weights, enrolment experiment, 3 picks of 5 photos of 8 held-out people: judge top-1 10.2% (0) and
# 18.3% (0.03) against 31.9% for trained people (0.32x -> 0.57x; 0.01 gave 16.0% against 10.9% on pick 0); the
# samples' intra-class diversity (1 - MS-SSIM) 0.614-0.616 against 0.658 with 0 (pick 0) and 0.644-0.652 for the
# nearest trained people. Birds release v4: 26.0% -> 34.8% against 57.5% (README, "Add a new person or species",
# also for what it costs by eye).
LAYER_LR = 0.03
# l1 KL, l2 L_G, l3 L_GD, l4 L_GC. The paper's training weights are 3, 1, 1e-3, 1e-3 (PAPER.md); enrolment uses a
# heavier identity term l4 = 10: on the faces release weights, over 3 picks of 5 photos of 8 held-out identities,
# the judge's top-1 on their samples was 1.5% (l4 = 1e-3, one pick), 4.0% (l4 = 1) and 7.4% (l4 = 10) against
# 9.7% for trained identities (README, "Add a new person or species"). PAPER_LAMBDAS reproduces the paper's.
DEFAULT_LAMBDAS = (3.0, 1.0, 1e-3, 10.0)
# Optimisation steps. 200 until 2026-12-05; the faces weights trained longer (release v8, 750 CPU-minutes) left a class
# learned in 200 steps behind: over 3 picks of 5 photos of 8 held-out people, judge top-1 18.8% (200 steps) and
# 23.2% (400) against 40.1% for trained people (0.47x -> 0.58x), 22 s and 41 s per person on 2 cores (README,
# "Add a new person or species").
DEFAULT_STEPS = 400
PAPER_LAMBDAS = (3.0, 1.0, 1e-3, 1e-3)
FRAMING_HINT = (
    "photos are centre-cropped to a square and resized, so the subject must sit where it sat in the "
    "training photos (faces: aligned like CelebA's img_align_celeba, eyes level, face centred and "
    "filling most of the square)"
)


class EnrolError(InputError):
    """Photos, a name or a class file that cannot be used; the message says why and what to do."""


@dataclass
class EnrolledClass:
    """One learned class: what add_classes grows the networks by, and where it may be added."""

    name: str  # display name (unique among the model's classes, case-insensitive)
    folder: str  # class_folders entry: enrolled_<slug>
    generator_embed: torch.Tensor  # (label_dim,) G's label embedding row
    encoder_embed: torch.Tensor  # (label_dim,) E's label embedding row
    classifier_weight: torch.Tensor  # (feature_dim,) C's output row
    classifier_bias: float  # C's output bias
    base: dict  # the weights it was learned for: dims + sha256 of encoder/generator/classifier.safetensors
    info: dict = field(default_factory=dict)  # how it was learned: photos, steps, seconds, init_from, figures
    warnings: list[str] = field(default_factory=list)  # about the photos: heavy centre crops, photos too small
    # the photo prior: mean and std (z_dim,) of E's posteriors of the photos and their mirror images, pooled
    # (a Gaussian with the first two moments of their mixture); sample(..., prior="photos") draws z from it
    z_mean: torch.Tensor | None = None
    z_std: torch.Tensor | None = None
    # (Generator.offset_size(),) the class's terms added to the gain and bias of each of G's class BatchNorms;
    # None: none (class files of version 1, weights without class-conditional BatchNorm, or layer_lr 0)
    generator_offsets: torch.Tensor | None = None


# ------------------------------------------------------------------ inputs


def base_identity(model: CVAEGAN) -> dict:
    """What a class file must match: dimensions, and the sha256 of the network files (from config.json)."""
    c = model.config
    return {
        "resolution": c.resolution,
        "z_dim": c.z_dim,
        "label_dim": c.label_dim,
        "feature_dim": c.feature_dim,
        "num_classes": sum(not f.startswith(FOLDER_PREFIX) for f in c.class_folders),
        "files": {f: c.files[f] for f in NETWORK_FILES if c.files.get(f)},
    }


def check_layer_lr(value: float, name: str = "layer_lr", error: type[InputError] = EnrolError) -> float:
    """The step size of a new class's terms in G's class BatchNorms: 0 (none learned) or a finite positive
    number, else `error` naming the option as the caller spells it (`name`)."""
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise error(f"{name} must be 0 or positive, got {value}")
    return value


def check_lambdas(lambdas) -> tuple[float, float, float, float]:
    """The four loss weights (l1 KL, l2 L_G, l3 L_GD, l4 L_GC): a sequence of 4 finite numbers >= 0, or their
    text "3,1,0.001,0.001" -> a tuple of floats, else EnrolError."""
    if isinstance(lambdas, str):
        parts = [s.strip() for s in lambdas.split(",")]
        try:
            lambdas = [float(s) for s in parts]
        except ValueError:
            raise EnrolError(f"loss weights must be 4 numbers like 3,1,0.001,0.001, got {','.join(parts)!r}") from None
    values = tuple(float(x) for x in lambdas)
    if len(values) != 4 or not all(math.isfinite(x) and x >= 0 for x in values):
        raise EnrolError(f"loss weights must be 4 finite numbers >= 0 (KL, L_G, L_GD, L_GC), got {list(values)}")
    if values[1] == 0:
        raise EnrolError(
            "the reconstruction weight l2 must be above 0: without it the class learns nothing of the photos"
        )
    return values


def check_name(model: CVAEGAN, name: str) -> str:
    """The stripped display name; EnrolError when empty, too long, all digits or already a class."""
    if not isinstance(name, str) or not name.strip():
        raise EnrolError('give the new class a name, e.g. --name "Ada Lovelace"')
    name = " ".join(name.split())
    if len(name) > 80:
        raise EnrolError(f"the name is {len(name)} characters long; use at most 80")
    if name.lstrip("-").isdigit():
        raise EnrolError(f"the name {name!r} is all digits and would be read as a class index; add a letter")
    taken = {n.lower() for n in model.config.class_names} | {f.lower() for f in model.config.class_folders}
    if name.lower() in taken:
        raise EnrolError(f"a class named {name!r} already exists in these weights; choose another name")
    return name


def _folder(model: CVAEGAN, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"
    folder, k, taken = FOLDER_PREFIX + slug, 2, set(model.config.class_folders)
    while folder in taken:
        folder, k = f"{FOLDER_PREFIX}{slug}_{k}", k + 1
    return folder


def _list_folder(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        sub = " (it has subfolders: put the photos directly in it)" if any(p.is_dir() for p in folder.iterdir()) else ""
        raise EnrolError(
            f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder{sub}; "
            f"add {MIN_PHOTOS}-10 photos of the new class"
        )
    return files


def load_photos(images, resolution: int) -> torch.Tensor:
    """A folder, or a list of paths / bytes / PIL images / arrays -> (N, 3, R, R) in [-1, 1].

    Every photo passes the project's input checks (any size or mode, broken files refused by name)
    and is centre-cropped and resized like the training data. EnrolError for too few, too many or
    repeated photos."""
    return _open_photos(images, resolution)[0]


def _open_photos(images, resolution: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.exists():
            raise EnrolError(f"{path}: no such file or folder; give a folder of photos or several photo files")
        images = _list_folder(path) if path.is_dir() else [path]
    images = list(images)
    if len(images) < MIN_PHOTOS:
        raise EnrolError(
            f"got {len(images)} photo(s); enrolment needs at least {MIN_PHOTOS} different photos "
            "of the new class (5-10 work better)"
        )
    if len(images) > MAX_PHOTOS:
        raise EnrolError(f"got {len(images)} photos; use at most {MAX_PHOTOS} (5-10 are enough)")
    xs, sizes = [], []
    for i, src in enumerate(images):
        label = str(src) if isinstance(src, (str, os.PathLike)) else f"photo {i + 1}"
        try:
            img = open_image(src, name=label)
        except ImageError as e:
            raise EnrolError(f"{e}; replace or remove this photo") from e
        sizes.append(img.size)
        xs.append(uint8_to_float(pil_to_uint8(fit(img, resolution))))
    x = torch.stack(xs)
    for i in range(len(x)):
        for j in range(i):
            if torch.equal(x[i], x[j]):
                raise EnrolError(
                    f"photos {j + 1} and {i + 1} are the same picture; give {MIN_PHOTOS} or more different photos"
                )
    return x, sizes


# ------------------------------------------------------------------ growing a model by classes


@torch.no_grad()
def _grow(model: CVAEGAN, classes: Sequence[EnrolledClass]) -> None:
    """Append the classes' rows to E's and G's label embeddings and C's output layer, and to the config."""
    dev = model.device
    for net, key in ((model.generator, "generator_embed"), (model.encoder, "encoder_embed")):
        w = net.embed.weight
        rows = torch.stack([getattr(c, key) for c in classes]).to(dev, w.dtype)
        net.embed.weight = nn.Parameter(torch.cat([w.detach(), rows]), requires_grad=w.requires_grad)
        net.embed.num_classes = net.embed.weight.shape[0]
    old = model.classifier.out
    new = nn.Linear(old.in_features, old.out_features + len(classes)).to(dev, old.weight.dtype)
    new.weight.copy_(torch.cat([old.weight, torch.stack([c.classifier_weight for c in classes]).to(new.weight)]))
    new.bias.copy_(torch.cat([old.bias, torch.tensor([c.classifier_bias for c in classes]).to(new.bias)]))
    new.requires_grad_(old.weight.requires_grad)
    model.classifier.out = new
    first = model.config.num_classes
    g = model.generator
    if g.class_offsets is not None or any(c.generator_offsets is not None for c in classes):
        size = g.offset_size()
        table = g.class_offsets if g.class_offsets is not None else torch.zeros(first, size, device=dev)
        rows = [c.generator_offsets if c.generator_offsets is not None else torch.zeros(size) for c in classes]
        g.class_offsets = torch.cat([table, torch.stack(rows).to(table)])
    for i, c in enumerate(classes):
        if c.z_mean is not None:
            model.class_priors[first + i] = (c.z_mean.float().cpu(), c.z_std.float().cpu())
    cfg = model.config.to_dict()
    cfg["class_names"] = cfg["class_names"] + [c.name for c in classes]
    cfg["class_folders"] = cfg["class_folders"] + [c.folder for c in classes]
    cfg["num_classes"] = len(cfg["class_names"])
    model.config = type(model.config).from_dict(cfg)


def check_compatible(model: CVAEGAN, cls: EnrolledClass, source: str = "class") -> None:
    """EnrolError unless `cls` was learned for these weights (same dims and network file hashes)
    and its name is not taken."""
    mine, theirs = base_identity(model), cls.base
    for key in ("resolution", "z_dim", "label_dim", "feature_dim"):
        if theirs.get(key) != mine[key]:
            raise EnrolError(
                f"{source}: made for weights with {key} {theirs.get(key)}, these have {mine[key]}; "
                "enrol the class again on these weights"
            )
    off = cls.generator_offsets
    if off is not None and off.numel() != model.generator.offset_size():
        raise EnrolError(
            f"{source}: carries {off.numel()} per-layer generator terms, these weights' generator takes "
            f"{model.generator.offset_size()}; enrol the class again on these weights"
        )
    if theirs.get("files", {}) != mine["files"]:
        raise EnrolError(
            f"{source}: made for other weights (the sha256 of their network files differ from "
            f"these weights' config.json); load it with the weights it was enrolled on, or enrol again"
        )
    check_name(model, cls.name)


def add_classes(model: CVAEGAN, classes: EnrolledClass | Sequence[EnrolledClass]) -> list[int]:
    """Add enrolled classes to a loaded model in place; returns their new class indices.

    Afterwards every function of cvaegan.inference (sample, swap, interpolate, inpaint, ...) takes
    their names. Do not call it while another thread runs the same model."""
    classes = [classes] if isinstance(classes, EnrolledClass) else list(classes)
    names = [c.name.lower() for c in classes]
    if len(set(names)) != len(names):
        raise EnrolError(f"two enrolled classes share a name: {[c.name for c in classes]}; rename one")
    for c in classes:
        check_compatible(model, c, f"class {c.name!r}")
    first = model.config.num_classes
    _grow(model, classes)
    return list(range(first, first + len(classes)))


# ------------------------------------------------------------------ learning a class


def _photo_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)[1].float()


def _fit_classifier_row(
    net: CVAEGAN,
    k_base: int,
    f_pos: torch.Tensor,
    shift: torch.Tensor,
    k0: int,
    gen: torch.Generator,
    neighbours: int = 8,
    per_class: int = 8,
    steps: int = 200,
) -> tuple[torch.Tensor, float]:
    """C's new output row by cross-entropy over the K existing rows and the new one (C's features stay fixed,
    so this is a logistic regression). The photos (and their mirror images) are the new class. Generated
    samples of the nearest existing classes that C gets right are their own class, once as generated and once
    shifted by `shift` = mean f_C(photos) - mean f_C(their reconstructions), C's offset between a real photo
    and G's rendering of it: without these the row could learn "a real photo" instead of the class and take
    over real photos of its neighbours. The row starts from class k0's; its norm and bias stay within the
    existing rows'."""
    cfg = net.config
    W, b = net.classifier.out.weight[:k_base].detach().float(), net.classifier.out.bias[:k_base].detach().float()
    with torch.no_grad():
        probs = (f_pos @ W.T + b).softmax(1).mean(0)
        near = probs.topk(min(neighbours, k_base)).indices.cpu()
        labels = near.repeat_interleave(per_class)
        seeds = torch.randint(0, 2**31, (len(labels),), generator=gen).tolist()
        logits, f_gen = net.classifier(
            net.generator(z_from_seeds(seeds, cfg.z_dim).to(f_pos.device), labels.to(f_pos.device))
        )
        keep = (logits[:, :k_base].argmax(1).cpu() == labels).to(f_pos.device)
        f_gen, y_gen = f_gen.float()[keep], labels.to(f_pos.device)[keep]
        f_neg, y_neg = torch.cat([f_gen, f_gen + shift]), torch.cat([y_gen, y_gen])
    w = W[k0].clone().requires_grad_(True)
    bias = b[k0].clone().requires_grad_(True)
    max_norm, max_bias = W.norm(dim=1).max(), b.max()
    opt = torch.optim.Adam([w, bias], lr=0.01)
    y_pos = torch.full((len(f_pos),), k_base, device=f_pos.device)

    def logits_of(f):
        return torch.cat([f @ W.T + b, (f @ w + bias)[:, None]], 1)

    for _ in range(steps):
        loss = F.cross_entropy(logits_of(f_pos), y_pos)
        if len(f_neg):
            loss = loss + F.cross_entropy(logits_of(f_neg), y_neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # keep the new row no stronger than the strongest existing one
            w.mul_((max_norm / w.norm()).clamp(max=1.0))
            bias.clamp_(max=max_bias)
    return w.detach(), float(bias.detach())


def photo_prior(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian with the mean and variance of the mixture of the photos' posteriors N(mu_i, exp(logvar_i)):
    mean = mean_i mu_i, var = mean_i exp(logvar_i) + var_i mu_i (per dimension) -> (z_mean, z_std)."""
    var = logvar.exp().mean(0) + mu.var(0, unbiased=False)
    return mu.mean(0), var.clamp(1e-6, 1e4).sqrt()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item() / 4.0  # [-1, 1] -> [0, 1] scale
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def photo_warnings(sizes: Sequence[tuple[int, int]], resolution: int) -> list[str]:
    """What can be checked without a face or object detector: photos that lose much to the centre crop,
    and photos smaller than the model's resolution (enlarged, so blurry)."""
    out = []
    for i, (w, h) in enumerate(sizes):
        cut = 1 - min(w, h) / max(w, h)
        if cut > 0.2:
            out.append(
                f"photo {i + 1} is {w}x{h}: the centre crop to a square cuts off {cut:.0%} of it; crop it "
                f"around the subject yourself ({FRAMING_HINT})"
            )
        if min(w, h) < resolution:
            out.append(
                f"photo {i + 1} is {w}x{h}, smaller than the model's {resolution}x{resolution}: it is enlarged "
                "and blurry; use a larger photo"
            )
    return out


def enrol(
    model: CVAEGAN,
    images,
    name: str,
    steps: int = DEFAULT_STEPS,
    lr: float = 0.1,
    prior_batch: int = 8,
    lambdas: tuple[float, float, float, float] = DEFAULT_LAMBDAS,
    seed: int = 0,
    init_from: str | int | None = None,
    progress: Progress = None,
    layer_lr: float = LAYER_LR,
    discriminator: nn.Module | None = None,
) -> EnrolledClass:
    """Learn a new class from 3-50 photos (5-10 recommended) without changing the model.

    images: a folder, or a list of paths / bytes / PIL images / arrays. The new class gets its own label
    embedding for G and for E (both start from the existing class C finds nearest), its own terms added to the
    gain and bias of each of G's class-conditional BatchNorms (start at zero, Adam step size layer_lr; 0 learns
    none; weights without class BatchNorm have none) and its own row of C's output layer; every network weight
    stays frozen. Per step, with photos x_r (randomly mirrored) and
    prior samples x_p = G(z_p, new):
        loss = l1 L_KL + l2 L_G + l3 L_GD + l4 L_GC   (the paper's terms and weights, restricted to the new class)
    with x_f = G(E(x_r, new), new), L_G = 1/2 (||x_r - x_f||^2 + ||f_D(x_r) - f_D(x_f)||^2 + ||f_C(x_r) - f_C(x_f)||^2)
    (the D term only when the weights carry D), L_GD / L_GC = 1/2 ||mean f(x_r) - running mean f(x_p)||^2.
    init_from: the existing class to start from (name or index; default: the one C finds nearest).
    discriminator: D to take features from when `model` was loaded without one (`model.load_discriminator()`;
    the app does this), so the class learned is the one `model` with D would learn.
    The model passed in is not modified (enrolment runs on a private copy): add the result with add_classes.
    progress(fraction, message) is called as it goes. Deterministic for a given seed.
    """
    if steps < 1 or prior_batch < 1 or lr <= 0:
        raise EnrolError("steps and prior_batch must be at least 1 and lr positive")
    layer_lr = check_layer_lr(layer_lr)
    lambdas = check_lambdas(lambdas)
    t0 = time.perf_counter()
    name = check_name(model, name)
    cfg, dev = model.config, model.device
    x, sizes = _open_photos(images, cfg.resolution)
    x = x.to(dev)
    n, k_new = len(x), cfg.num_classes
    net = copy.deepcopy(model)  # private: the served model is never touched
    if net.discriminator is None and discriminator is not None:
        net.discriminator = copy.deepcopy(discriminator).to(dev)
    net.eval().requires_grad_(False)
    if use_channels_last("auto", dev):  # about 1.2-1.4x faster on CPU (README, Add a new person)
        net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    l1, l2, l3, l4 = lambdas

    with torch.no_grad():  # fixed per photo (networks frozen): C's and D's features of x_r and its mirror image
        both = torch.cat([x, x.flip(-1)])
        fc_both = _photo_features(net.classifier, both)
        fd_both = (
            _photo_features(net.discriminator, both) if net.discriminator is not None else both.new_zeros(2 * n, 0)
        )
        probs = (net.classifier(x)[0].float().softmax(1)).mean(0)
        k0 = int(probs.argmax()) if init_from is None else cfg.class_index(init_from)
    c_out = net.classifier.out  # the new class starts as a copy of class k0 in G, E and C
    start = EnrolledClass(
        name,
        _folder(model, name),
        net.generator.embed.weight[k0].detach().float().cpu(),
        net.encoder.embed.weight[k0].detach().float().cpu(),
        c_out.weight[k0].detach().float().cpu(),
        float(c_out.bias[k0]),
        base_identity(model),
    )
    _grow(net, [start])
    g_base, e_base = net.generator.embed.weight[:-1].detach(), net.encoder.embed.weight[:-1].detach()
    g_row = net.generator.embed.weight[-1].detach().clone().requires_grad_(True)
    e_row = net.encoder.embed.weight[-1].detach().clone().requires_grad_(True)

    def E(xs):  # E and G with the learnable rows in place of their last embedding row
        c = torch.full((len(xs),), k_new, device=dev)
        return functional_call(net.encoder, {"embed.weight": torch.cat([e_base, e_row[None]])}, (xs, c))

    size = net.generator.offset_size() if layer_lr > 0 else 0
    g_off = torch.zeros(size, device=dev, requires_grad=True)
    if size and net.generator.class_offsets is None:  # trained classes' rows are zero
        net.generator.class_offsets = torch.zeros(k_new + 1, size, device=dev)
    other_rows = net.generator.class_offsets[:-1] if size else None  # (classes enrolled before keep theirs)

    def G(z):
        c = torch.full((len(z),), k_new, device=dev)
        params = {"embed.weight": torch.cat([g_base, g_row[None]])}
        if size:
            params["class_offsets"] = torch.cat([other_rows, g_off[None]])
        return functional_call(net.generator, params, (z, c))

    with torch.no_grad():
        psnr_before = _psnr(G(E(x)[0]), x)
    fc_mean, fd_mean = fc_both.mean(0), fd_both.mean(0)
    run_c = run_d = None  # running means of C's / D's features of the prior samples (momentum 0.9)
    groups = [{"params": [g_row, e_row], "base_lr": lr}] + ([{"params": [g_off], "base_lr": layer_lr}] if size else [])
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.99))
    batch = min(n, BATCH_PHOTOS)
    log: dict[str, float] = {}
    for step in range(steps):
        for group in opt.param_groups:  # cosine decay to 10% of lr
            group["lr"] = group["base_lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        pick = torch.randperm(n, generator=gen)[:batch] if n > batch else torch.arange(n)
        flip = torch.rand(batch, generator=gen) < 0.5
        rows = (pick + flip.long() * n).to(dev)
        x_r, fc_r, fd_r = both[rows], fc_both[rows], fd_both[rows]
        eps = torch.randn(batch, cfg.z_dim, generator=gen).to(dev)
        z_p = torch.randn(prior_batch, cfg.z_dim, generator=gen).to(dev)
        mu, logvar = E(x_r)
        xg = G(torch.cat([mu + eps * (0.5 * logvar).exp(), z_p]))  # eval mode: batching does not mix samples
        x_f = xg[:batch]
        fc_g = net.classifier(xg)[1].float()
        fd_g = net.discriminator(xg)[1].float() if net.discriminator is not None else xg.new_zeros(len(xg), 0)
        est_c = fc_g[batch:].mean(0) if run_c is None else 0.9 * run_c + 0.1 * fc_g[batch:].mean(0)
        est_d = fd_g[batch:].mean(0) if run_d is None else 0.9 * run_d + 0.1 * fd_g[batch:].mean(0)
        run_c, run_d = est_c.detach(), est_d.detach()
        terms = {
            "KL": kl_loss(mu, logvar),
            "G": reconstruction_loss(x_r, x_f, fd_r, fd_g[:batch], fc_r, fc_g[:batch]),
            "GD": mean_feature_matching(fd_mean, est_d),
            "GC": mean_feature_matching(fc_mean, est_c),
        }
        loss = l1 * terms["KL"] + l2 * terms["G"] + l3 * terms["GD"] + l4 * terms["GC"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log = {k: float(v.detach()) for k, v in terms.items()}
        if progress is not None:
            progress((step + 1) / steps, f"step {step + 1}/{steps}: L_G {log['G']:.4g}, L_KL {log['KL']:.4g}")

    with torch.no_grad():
        net.generator.embed.weight[-1] = g_row.detach()
        net.encoder.embed.weight[-1] = e_row.detach()
        if size:
            net.generator.class_offsets[-1] = g_off.detach()
        c_new = torch.full((2 * n,), k_new, device=dev)
        mu_all, logvar_all = net.encoder(both, c_new)
        recon = net.generator(mu_all, c_new)
        psnr_after = _psnr(recon[:n], x)
        z_mean, z_std = photo_prior(mu_all.float(), logvar_all.float())
        shift = fc_both.mean(0) - _photo_features(net.classifier, recon).mean(0)
    w_c, b_c = _fit_classifier_row(net, k_new, fc_both, shift, k0, gen)
    with torch.no_grad():
        net.classifier.out.weight[-1], net.classifier.out.bias[-1] = w_c, b_c
        top1_photos = (net.classifier(x)[0].argmax(1) == k_new).float().mean().item()
        s = net.generator(z_from_seeds(list(range(16)), cfg.z_dim).to(dev), torch.full((16,), k_new, device=dev))
        top1_samples = (net.classifier(s)[0].argmax(1) == k_new).float().mean().item()
    start.classifier_weight, start.classifier_bias = w_c.float().cpu(), b_c
    start.generator_embed, start.encoder_embed = g_row.detach().float().cpu(), e_row.detach().float().cpu()
    start.generator_offsets = g_off.detach().float().cpu() if size else None
    start.warnings = photo_warnings(sizes, cfg.resolution)
    start.z_mean, start.z_std = z_mean.cpu(), z_std.cpu()
    start.info = {
        "photos": n,
        "steps": steps,
        "seed": seed,
        "lr": lr,
        "layer_lr": layer_lr if size else 0.0,
        "prior_batch": prior_batch,
        "lambdas": list(lambdas),
        "init_from": cfg.class_names[k0],
        "init_probability": round(float(probs[k0]), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "final_losses": {k: round(v, 4) for k, v in log.items()},
        "recon_psnr_db_before": round(psnr_before, 2),
        "recon_psnr_db_after": round(psnr_after, 2),
        "c_top1_photos": round(top1_photos, 4),
        "c_top1_samples": round(top1_samples, 4),
        "discriminator": net.discriminator is not None,
        "cvaegan": __version__,
    }
    return start


def before_after(model: CVAEGAN, photos: torch.Tensor, name: str, seeds: Sequence[int] = range(8)):
    """A sheet for checking an enrolled class by eye: the photos (as the model sees them) in the first row,
    G's samples of the class for `seeds` below (z ~ N(0, I)), and, when the class carries a photo prior, the same
    seeds with it in a third row. The class must have been added to `model` (add_classes)."""
    x = sample(model, name, list(seeds))
    rows = [x]
    if model.config.class_index(name) in model.class_priors:
        rows.append(sample(model, name, list(seeds), prior="photos"))
    cols = max(len(photos), len(x))
    blank = torch.ones(cols - len(photos), *photos.shape[1:])
    return make_grid(torch.cat([photos.cpu(), blank, *rows]), ncol=cols)


# ------------------------------------------------------------------ the class file


def _digest(tensors: dict[str, torch.Tensor], names: list[str], folders: list[str], base: dict) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes) and what they belong to: a changed value,
    name or base identity in the file no longer matches the digest it carries."""
    h = hashlib.sha256()
    for key in [*TENSORS, *(k for k in (*PRIOR_TENSORS, OFFSET_TENSOR) if k in tensors)]:  # optional ones: as before
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    h.update(json.dumps([names, folders, base], sort_keys=True).encode())
    return h.hexdigest()


def save_classes(classes: EnrolledClass | Sequence[EnrolledClass], path: str | os.PathLike) -> Path:
    """Write one or more enrolled classes to a small .safetensors file (tensors + JSON metadata, no pickle).
    The released weights are not touched; keep the file beside them (not inside a folder you push)."""
    classes = [classes] if isinstance(classes, EnrolledClass) else list(classes)
    if not classes:
        raise EnrolError("no classes to save")
    base = classes[0].base
    if any(c.base != base for c in classes):
        raise EnrolError("these classes were enrolled on different weights; save them in separate files")
    if len(base.get("files", {})) != len(NETWORK_FILES):
        raise EnrolError(
            "the weights these classes were enrolled on have no recorded file hashes (a model built "
            "in memory); save the weights with save_pretrained, load them again and enrol on them, so "
            "the class file can name the weights it belongs to"
        )
    tensors = {
        "generator_embed": torch.stack([c.generator_embed.float() for c in classes]),
        "encoder_embed": torch.stack([c.encoder_embed.float() for c in classes]),
        "classifier_weight": torch.stack([c.classifier_weight.float() for c in classes]),
        "classifier_bias": torch.tensor([float(c.classifier_bias) for c in classes]),
    }
    with_prior = [c.z_mean is not None and c.z_std is not None for c in classes]
    if any(with_prior) and not all(with_prior):
        raise EnrolError(
            "some of these classes carry a photo prior and some do not (enrolled with an older cvaegan); "
            "save them in separate files or enrol the older ones again"
        )
    if all(with_prior):
        tensors["z_mean"] = torch.stack([c.z_mean.float() for c in classes])
        tensors["z_std"] = torch.stack([c.z_std.float() for c in classes])
    if any(c.generator_offsets is not None for c in classes):  # a class without them: zeros (the same thing)
        size = next(c.generator_offsets.numel() for c in classes if c.generator_offsets is not None)
        if any(c.generator_offsets is not None and c.generator_offsets.numel() != size for c in classes):
            raise EnrolError("these classes carry generator terms of different sizes; save them in separate files")
        tensors[OFFSET_TENSOR] = torch.stack(
            [c.generator_offsets.float() if c.generator_offsets is not None else torch.zeros(size) for c in classes]
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    names, folders = [c.name for c in classes], [c.folder for c in classes]
    meta = {
        "format": FILE_FORMAT,
        "format_version": str(FILE_VERSION),
        "cvaegan": __version__,
        "names": json.dumps(names, ensure_ascii=False),
        "folders": json.dumps(folders, ensure_ascii=False),
        "base": json.dumps(base, sort_keys=True),
        "info": json.dumps([c.info for c in classes]),
        "sha256": _digest(tensors, names, folders, base),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def _meta_json(meta: dict, key: str, path: Path):
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise EnrolError(f"{path}: class file metadata lacks a valid {key!r} entry; enrol the class again") from e


def load_classes(path: str | os.PathLike, model: CVAEGAN | None = None) -> list[EnrolledClass]:
    """Read a class file strictly: safetensors only (never unpickled), exact tensor names, shapes and dtype,
    finite values, the digest it carries; with `model`, also that it was made for these weights."""
    path = Path(path)
    if not path.is_file():
        raise EnrolError(f"{path}: class file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            names_in_file = fh.keys()  # (a safetensors handle, not a dict)
            tensors = {k: fh.get_tensor(k) for k in names_in_file}
    except (SafetensorError, OSError, ValueError) as e:
        raise EnrolError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated, corrupted or a "
            "pickle renamed to .safetensors"
        ) from e
    if meta.get("format") != FILE_FORMAT:
        raise EnrolError(
            f"{path}: not a cvaegan class file (format {meta.get('format')!r}); "
            "write one with `python -m cvaegan enrol`"
        )
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FILE_VERSION:
        raise EnrolError(
            f"{path}: class file format_version {version!r} is newer than this cvaegan understands "
            f"({FILE_VERSION}); upgrade cvaegan"
        )
    names, folders = _meta_json(meta, "names", path), _meta_json(meta, "folders", path)
    base, info = _meta_json(meta, "base", path), _meta_json(meta, "info", path)
    optional = set(tensors) - set(TENSORS)
    if (
        not set(TENSORS) <= set(tensors)
        or optional - {*PRIOR_TENSORS, OFFSET_TENSOR}
        or 0 < len(optional & set(PRIOR_TENSORS)) < len(PRIOR_TENSORS)
    ):
        raise EnrolError(
            f"{path}: expected tensors {list(TENSORS)} (and optionally {list(PRIOR_TENSORS)} and "
            f"{OFFSET_TENSOR!r}), found {sorted(tensors)}"
        )
    m = len(names) if isinstance(names, list) else -1
    if m < 1 or not isinstance(folders, list) or len(folders) != m or not isinstance(base, dict):
        raise EnrolError(f"{path}: class file metadata is inconsistent (names, folders, base); enrol the class again")
    want = {
        "generator_embed": (m, base.get("label_dim")),
        "encoder_embed": (m, base.get("label_dim")),
        "classifier_weight": (m, base.get("feature_dim")),
        "classifier_bias": (m,),
    }
    if "z_mean" in tensors:
        want.update({k: (m, base.get("z_dim")) for k in PRIOR_TENSORS})
    if OFFSET_TENSOR in tensors:  # its length is checked against the weights by check_compatible
        n_off = tensors[OFFSET_TENSOR].shape[-1] if tensors[OFFSET_TENSOR].dim() == 2 else -1
        want[OFFSET_TENSOR] = (m, n_off if n_off > 0 else "a positive length")
    for key, shape in want.items():
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != torch.float32:
            raise EnrolError(f"{path}: tensor {key!r} is {tuple(t.shape)} {t.dtype}, expected {shape} float32")
        if not torch.isfinite(t).all():
            raise EnrolError(f"{path}: tensor {key!r} holds NaN or infinite values; enrol the class again")
    if "z_std" in tensors and not (tensors["z_std"] > 0).all():
        raise EnrolError(f"{path}: tensor 'z_std' must be positive; enrol the class again")
    if meta.get("sha256") != _digest(tensors, names, folders, base):
        raise EnrolError(
            f"{path}: contents do not match the sha256 recorded in the file (changed or corrupted); "
            "enrol the class again"
        )
    info = info if isinstance(info, list) and len(info) == m else [{}] * m
    classes = [
        EnrolledClass(
            names[i],
            folders[i],
            tensors["generator_embed"][i],
            tensors["encoder_embed"][i],
            tensors["classifier_weight"][i],
            float(tensors["classifier_bias"][i]),
            base,
            info[i],
            z_mean=tensors["z_mean"][i] if "z_mean" in tensors else None,
            z_std=tensors["z_std"][i] if "z_std" in tensors else None,
            generator_offsets=tensors[OFFSET_TENSOR][i] if OFFSET_TENSOR in tensors else None,
        )
        for i in range(m)
    ]
    if model is not None:
        for c in classes:
            check_compatible(model, c, str(path))
    return classes


def load_extra_classes(model: CVAEGAN, paths) -> CVAEGAN:
    """Add the classes of one or more class files to a loaded model (in place; also returned).
    This is what `cvaegan.hub.load_pretrained(..., extra_classes=...)` calls."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    classes = [c for p in paths for c in load_classes(p, model)]
    if classes:
        add_classes(model, classes)
    return model
