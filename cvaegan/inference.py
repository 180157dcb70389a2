"""Inference as plain functions of a CVAEGAN and tensors: sample, swap, interpolate, encode, reconstruct,
edit along latent directions, inpaint, super-resolve, augment. Images are (B, 3, R, R) float tensors in [-1, 1].

Every function runs the networks in eval mode (BatchNorm uses its running statistics), so each image
depends only on its own (z, c): "seed s, class c" is the same picture whatever else is in the batch.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import InputError
from .images import (
    ImageError,
    center_crop_box,
    fill_smooth,
    load_tensor,
    open_image,
    open_mask,
    pil_to_uint8,
    psnr,
    save_png,
    to_pil,
    uint8_to_float,
)
from .models import CVAEGAN
from .seeds import z_from_seeds

Progress = Callable[[float, str], None] | None
DEFAULT_ITERATIONS = 4  # inpainting's encode-generate-paste rounds: the app's slider starts here; evaluate measures it


def class_indices(model: CVAEGAN, classes) -> list[int]:
    """One class spec (name, folder or index) or a list of them -> list of indices (raises on unknown)."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    return [model.config.class_index(c) for c in classes]


def _onehot(model: CVAEGAN, idx: Sequence[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(list(idx)), model.config.num_classes).float().to(model.device)


@torch.no_grad()
def generate(model: CVAEGAN, z: torch.Tensor, c: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    """G(z, c) in eval mode, in chunks of `batch_size`. z: (N, z_dim); c: (N,) indices or (N, K) weights."""
    model.generator.eval()
    dev = model.device
    out = [
        model.generator(z[i : i + batch_size].to(dev), c[i : i + batch_size].to(dev)).float().cpu()
        for i in range(0, len(z), batch_size)
    ]
    return torch.cat(out)


PRIORS = ("standard", "photos")


def apply_prior(model: CVAEGAN, z: torch.Tensor, idx: Sequence[int], prior: str = "standard") -> torch.Tensor:
    """z drawn from N(0, I) (one row per class index) -> z of the sampling prior. "standard": unchanged, the
    paper's prior. "photos": rows of classes enrolled from photos become mean + std * z, a Gaussian fitted to
    E's codes of their photos (cvaegan.enrol.photo_prior), so samples stay near those photos; other classes
    keep N(0, I)."""
    if prior not in PRIORS:
        raise InputError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    if prior == "standard" or not model.class_priors:
        return z
    z = z.clone()
    for row, k in enumerate(idx):
        if k in model.class_priors:
            mean, std = model.class_priors[k]
            z[row] = mean + std * z[row]
    return z


def sample(
    model: CVAEGAN,
    classes,
    seeds: Sequence[int],
    truncation: float = 1.0,
    batch_size: int = 1,
    prior: str = "standard",
) -> torch.Tensor:
    """Images for `seeds` (one per seed) of one class, or of one class per seed when `classes` is a list
    of the same length. batch_size 1 (default) makes every image bit-identical however many are asked.
    prior: "standard" (z ~ N(0, I), the paper's) or "photos" (classes enrolled from photos sample z near
    their photos' codes, see apply_prior; truncation then shrinks towards that mean)."""
    idx = class_indices(model, classes)
    if len(idx) == 1:
        idx = idx * len(seeds)
    if len(idx) != len(seeds):
        raise InputError(f"got {len(idx)} classes for {len(seeds)} seeds; give one class or one per seed")
    z = apply_prior(model, z_from_seeds(list(seeds), model.config.z_dim, truncation), idx, prior)
    return generate(model, z, torch.tensor(idx), batch_size)


def class_samples(model: CVAEGAN, seed: int = 0, truncation: float = 0.7) -> torch.Tensor:
    """One sample per class, all with the same z: (K, 3, R, R) in [-1, 1] (the per-class thumbnails)."""
    k = model.config.num_classes
    return generate(model, z_from_seeds([seed] * k, model.config.z_dim, truncation), torch.arange(k), batch_size=64)


def swap(model: CVAEGAN, z: torch.Tensor, classes) -> torch.Tensor:
    """The paper's category change: one z (z_dim,) rendered as each of `classes` -> (len, 3, R, R)."""
    idx = class_indices(model, classes)
    return generate(model, z.reshape(1, -1).expand(len(idx), -1), torch.tensor(idx), batch_size=len(idx))


def as_model_input(model: CVAEGAN, image) -> torch.Tensor:
    """Any image (path, bytes, PIL, array, or a (3, R, R) tensor) -> (1, 3, R, R) in [-1, 1] on the model's device."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image.unsqueeze(0)
        r = model.config.resolution
        if x.shape[1:] != (3, r, r):
            raise ImageError(f"tensor image must be (3, {r}, {r}), got {tuple(image.shape)}")
    else:
        x = load_tensor(image, model.config.resolution).unsqueeze(0)
    return x.to(model.device)


@torch.no_grad()
def classify(model: CVAEGAN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C's guess for (B, 3, R, R) images -> (class indices (B,), probabilities (B,))."""
    model.classifier.eval()
    probs = model.classifier(x.to(model.device))[0].float().softmax(1)
    p, i = probs.max(1)
    return i.cpu(), p.cpu()


def guesser_share(model: CVAEGAN) -> float:
    """The class guesser's share w of the "auto" guess (config.json's guesser entry, measured by `fit-guesser`; 1,
    the guesser alone, for weights fitted before it was measured); 0 without a guesser (C alone)."""
    return float(model.config.guesser.get("weight", 1.0)) if model.guesser is not None else 0.0


def guess_source(model: CVAEGAN) -> str:
    """Who names the class of a photo to inpaint in "auto" mode (`guess_probabilities`): "C", "the class guesser"
    (its share w is 1) or "C and the class guesser" (0 < w < 1)."""
    return share_source(guesser_share(model))


def share_source(w: float) -> str:
    """Who guesses for the guesser's share w: "the class guesser" (1), "C" (0) or "C and the class guesser"."""
    return "the class guesser" if w >= 1 else "C" if w <= 0 else "C and the class guesser"


@torch.no_grad()
def guess_probabilities(model: CVAEGAN, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, K) for (B, 3, R, R) images in [-1, 1] whose hole is filled smoothly: the inpainting's
    "auto" guess. From C, or, when the weights have a class guesser (`cvaegan fit-guesser`, trained on photos with
    holes), from the guesser and C together: the normalised product p_guesser^w * p_C^(1 - w), w the entry's
    measured `weight` (1: the guesser alone, as weights fitted before it was measured). The guesser knows the
    trained classes only: a photo that C takes for a class enrolled later (`cvaegan.enrol`) keeps C's guess."""

    def log_probs(net: nn.Module) -> torch.Tensor:
        net.eval()
        return net(x.to(model.device))[0].float().log_softmax(1).cpu()

    if model.guesser is None:
        return log_probs(model.classifier).exp()
    w = guesser_share(model)
    g = log_probs(model.guesser)
    k = g.shape[1]
    if w == 1 and model.classifier.out.out_features == k:  # the guesser alone, no class enrolled after it
        return g.exp()
    c = log_probs(model.classifier)
    out = torch.cat([(w * g + (1 - w) * c[:, :k]).softmax(1), torch.zeros(len(g), c.shape[1] - k)], 1)
    enrolled = c.argmax(1) >= k
    out[enrolled] = c[enrolled].exp()
    return out


@torch.no_grad()
def encode(model: CVAEGAN, x: torch.Tensor, cls=None) -> tuple[torch.Tensor, int, float | None]:
    """x: (1, 3, R, R) -> (z = E's mean (z_dim,), class index, C's probability or None when given)."""
    model.encoder.eval()
    if cls is None or cls == "":
        i, p = classify(model, x)
        idx, prob = int(i[0]), float(p[0])
    else:
        idx, prob = class_indices(model, cls)[0], None
    mu, _ = model.encoder(x.to(model.device), torch.tensor([idx], device=model.device))
    return mu[0].float().cpu(), idx, prob


REFINE_LR = 0.05  # Adam's step size for z refinement (inpainting and reconstruction)
REFINE_PRIOR = 1e-3  # weight of the mean of z^2 in the refinement loss: keeps z from drifting without bound


def refine_codes(
    model: CVAEGAN,
    z: torch.Tensor,
    c: torch.Tensor,
    x: torch.Tensor,
    known: torch.Tensor | None = None,
    steps: int = 50,
    lr: float = REFINE_LR,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Optimise codes z (B, z_dim) with Adam so that G(z, c) matches the pixels of x (B, 3, R, R) where `known`
    (B, 1, R, R) is 1 (None: every pixel). Per image the loss is the squared error summed over channels and
    averaged over its known pixels, plus REFINE_PRIOR x the mean of z^2; images are optimised independently (G in
    eval mode, so one image's result does not depend on the rest of the batch). progress(step) after each step.
    Returns the refined z (detached)."""
    g = model.generator.eval()
    x = x.to(z.device)
    known = torch.ones_like(x[:, :1]) if known is None else known.to(z.device).float()
    count = known.flatten(1).sum(1).clamp(min=1)
    z = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            err = ((g(z, c) - x).pow(2) * known).flatten(1).sum(1) / count
            loss = (err + REFINE_PRIOR * z.pow(2).mean(1)).sum()
            # the gradient of z only: G's parameters (shared with other requests) are never written to
            (z.grad,) = torch.autograd.grad(loss, [z])
            opt.step()
            if progress:
                progress(step + 1)
    return z.detach()


def reconstruct_batch(
    model: CVAEGAN,
    x: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
    refine_steps: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images of known classes through E (its mean) and G: x (B, 3, R, R) in [-1, 1], labels (B,) model class
    indices -> (B, 3, R, R) float on the CPU, clamped to [-1, 1]. The figures' reconstruction PSNR uses this.
    refine_steps > 0: each E code is then optimised on its photo's pixels (`refine_codes`) before G renders it.
    progress(n) after each batch of n photos."""
    model.encoder.eval()
    model.generator.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb, cb = x[i : i + batch_size].to(model.device), labels[i : i + batch_size].to(model.device)
        with torch.no_grad():
            mu, _ = model.encoder(xb, cb)
        if refine_steps > 0:
            mu = refine_codes(model, mu.float(), cb, xb, steps=refine_steps)
        with torch.no_grad():
            out.append(model.generator(mu, cb).float().clamp(-1, 1).cpu())
        if progress:
            progress(len(xb))
    return torch.cat(out) if out else torch.zeros(0, *x.shape[1:])


def reconstruct(
    model: CVAEGAN, image, cls=None, refine_steps: int = 0, progress: Progress = None
) -> tuple[torch.Tensor, int, float | None]:
    """Photo -> E -> G at model resolution. Returns (image (3, R, R), class used, C's probability if predicted).
    refine_steps > 0 then optimises the code on the photo's pixels (`refine_codes`): a closer likeness, at the
    price of a code further from the prior (edits and class changes from it may look less natural)."""
    x = as_model_input(model, image)
    z, idx, prob = encode(model, x, cls)
    if refine_steps > 0:
        report = (lambda s: progress(s / refine_steps, f"refining {s}/{refine_steps}")) if progress else None
        c = torch.tensor([idx], device=model.device)
        z = refine_codes(model, z[None].to(model.device), c, x, steps=refine_steps, progress=report)[0].cpu()
    return generate(model, z[None], torch.tensor([idx]))[0], idx, prob


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two vectors (linear when they are (anti)parallel); exact at t = 0 and 1."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    na, nb = a.norm(), b.norm()
    cos = (a @ b / (na * nb).clamp(min=1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def endpoint(
    model: CVAEGAN, cls=None, seed: int | None = None, image=None, truncation: float = 1.0, prior: str = "standard"
) -> tuple[torch.Tensor, int]:
    """An interpolation endpoint: (class, seed) or an encoded photo (class given or predicted) -> (z, class).
    prior: as in sample (for a (class, seed) endpoint)."""
    if image is not None:
        z, idx, _ = encode(model, as_model_input(model, image), cls)
        return z, idx
    if cls is None or seed is None:
        raise InputError("an endpoint needs either an image, or both a class and a seed")
    k = class_indices(model, cls)[0]
    return apply_prior(model, z_from_seeds([seed], model.config.z_dim, truncation), [k], prior)[0], k


def interpolate(
    model: CVAEGAN, a: tuple[torch.Tensor, int], b: tuple[torch.Tensor, int], frames: int = 8, mode: str = "both"
) -> torch.Tensor:
    """Frames from endpoint a to b -> (frames, 3, R, R); the first and last frames equal G(a) and G(b)
    exactly. mode "z": z slerped, class of a; "class": one-hot weights mixed, z of a; "both": both."""
    if mode not in ("z", "class", "both"):
        raise InputError(f"mode must be 'z', 'class' or 'both', got {mode!r}")
    if not 2 <= frames <= 256:
        raise InputError(f"frames must be between 2 and 256, got {frames}")
    (za, ca), (zb, cb) = a, b
    ha, hb = _onehot(model, [ca])[0].cpu(), _onehot(model, [cb])[0].cpu()
    zs, cs = [], []
    for i in range(frames):
        t = i / (frames - 1)
        zs.append(slerp(za, zb, t) if mode in ("z", "both") else za)
        cs.append((1 - t) * ha + t * hb if mode in ("class", "both") else ha)
    return generate(model, torch.stack(zs), torch.stack(cs))


def save_gif(frames: torch.Tensor, path: str | os.PathLike, ms_per_frame: int = 120, bounce: bool = True) -> None:
    """(N, 3, H, W) in [-1, 1] -> looping animated GIF (played forwards then backwards when bounce)."""
    imgs = [to_pil(f) for f in frames]
    if bounce and len(imgs) > 2:
        imgs = imgs + imgs[-2:0:-1]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, format="GIF", save_all=True, append_images=imgs[1:], duration=ms_per_frame, loop=0)


def edit(model: CVAEGAN, z: torch.Tensor, amounts: dict[str, float]) -> torch.Tensor:
    """Move z (z_dim,) along saved directions: z + sum_k amount_k * scale_k * dir_k.
    Amounts are in each direction's unit (config.direction_units): "std" = standard deviations (of z
    along a PC, or of the real photos' attribute for attr_*); "attribute units" (older weights) = the
    attribute's own units.
    Amount 0 for every direction returns z unchanged."""
    if not amounts:
        return z
    if model.directions is None:
        raise InputError("these weights have no latent directions; run `cvaegan directions` first")
    names = model.config.directions
    out = z.clone()
    for name, amount in amounts.items():
        if name not in names:
            raise InputError(f"unknown direction {name!r}; available: {names}")
        amount = float(amount)
        if amount != amount or abs(amount) > 1e3:
            raise InputError(f"direction amount must be a finite number within +-1000, got {amount!r}")
        if amount:
            k = names.index(name)
            out = out + amount * model.direction_scales[k] * model.directions[k]
    return out


def fill_known_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Masked pixels (m True) set to the mean colour of each image's known pixels (`cvaegan evaluate`'s floor:
    the mean-colour fill)."""
    known = (~m).float()
    mean = (x * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(min=1)
    return torch.where(m, mean.expand_as(x), x)


def inpaint_tensor(
    model: CVAEGAN,
    x: torch.Tensor,
    m: torch.Tensor,
    cls: int,
    iterations: int = 4,
    refine_steps: int = 0,
    refine_lr: float = REFINE_LR,
    progress: Progress = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's iterative inpainting at model resolution.

    x: (1, 3, R, R) in [-1, 1]; m: (1, 1, R, R) bool, True = missing; cls: class index.
    x_0 fills the hole smoothly from its border (`fill_smooth`; pass it as `start` when already computed).
    Repeat `iterations` times: z = E(x_k, c); x_gen = G(z, c); x_{k+1} = known pixels of x, x_gen elsewhere.
    refine_steps > 0 then optimises z so that G(z, c) matches the known pixels. Returns x_gen (1, 3, R, R)
    (the full generated image; composite it with the known pixels yourself, or use `inpaint`).
    """
    dev = model.device
    x, m = x.to(dev), m.to(dev)
    c = torch.tensor([cls], device=dev)
    model.encoder.eval()
    model.generator.eval()
    cur = fill_smooth(x, m) if start is None else torch.where(m, start.to(dev), x)
    gen = cur
    with torch.no_grad():
        for k in range(max(1, iterations)):
            z = model.encoder(cur, c)[0]
            gen = model.generator(z, c).float()
            cur = torch.where(m, gen, x)
            if progress:
                progress((k + 1) / (max(1, iterations) + refine_steps), f"iteration {k + 1}/{iterations}")
    if refine_steps > 0:

        def report(step: int) -> None:
            if progress and (step - 1) % 10 == 0:
                progress((iterations + step) / (iterations + refine_steps), f"refining {step}/{refine_steps}")

        z = refine_codes(model, z.float(), c, x, (~m).float(), refine_steps, refine_lr, report)
        with torch.no_grad():
            gen = model.generator(z, c).float()
    return gen.detach()


def inpaint(
    model: CVAEGAN,
    image,
    mask,
    cls=None,
    iterations: int = DEFAULT_ITERATIONS,
    refine_steps: int = 0,
    blend: bool = True,
    progress: Progress = None,
    feather: float | None = None,
) -> dict:
    """Fill the masked pixels of a photo of any size.

    image: path/bytes/PIL/array; mask: any image or (H, W) array, non-zero (or alpha > 0) = missing.
    blend (default): the app's pipeline, `cvaegan.blend.inpaint`: the model fills a square window around
    the hole at its resolution and the fill is upsampled and pasted in without a seam. blend=False: the
    whole photo is resized to the model's square resolution (not cropped, so every masked pixel is
    covered), inpainted, and the generated pixels are resized back and pasted as they are. Known pixels
    are returned unchanged either way. feather (blend only): model pixels over which the generated detail fades
    in from the hole's rim (`blend.seamless_paste`; default: the weights' `inpaint_feather`). Returns {"image": PIL
    at input size, "model_image": PIL at model resolution, "class": index, "probability": C's probability or None}.
    """
    img = open_image(image, name="image")
    w, h = img.size
    miss = open_mask(mask, (w, h))
    r = model.config.resolution
    if not miss.any():
        small = img.resize((r, r), Image.BICUBIC)
        return {"image": img, "model_image": small, "class": None, "probability": None}
    given = None if cls is None or cls == "" else class_indices(model, cls)[0]
    if blend:
        from . import blend as B  # blend builds on this module

        out = B.inpaint(model, img, miss, given, iterations, refine_steps, progress=progress, feather=feather)
        prob = out["top"][0][1] if out["top"] else None
        return {"image": out["image"], "model_image": out["model_image"], "class": out["class"], "probability": prob}
    x = uint8_to_float(pil_to_uint8(img.resize((r, r), Image.BICUBIC)))[None]
    m_small = open_mask(miss, (r, r))
    if miss.all():
        m_small[:] = True
    m = torch.from_numpy(m_small)[None, None]
    if given is None:
        p, idx = guess_probabilities(model, fill_smooth(x.to(model.device), m.to(model.device))).max(1)
        cls_idx, prob = int(idx[0]), float(p[0])
    else:
        cls_idx, prob = given, None
    gen = inpaint_tensor(model, x, m, cls_idx, iterations, refine_steps, progress=progress).cpu()
    gen_big = np.asarray(to_pil(gen[0]).resize((w, h), Image.BICUBIC))
    out = np.where(miss[:, :, None], gen_big, np.asarray(img)).astype(np.uint8)
    return {
        "image": Image.fromarray(out, "RGB"),
        "model_image": to_pil(torch.where(m, gen, x)[0]),
        "class": cls_idx,
        "probability": prob,
    }


def superresolve(
    model: CVAEGAN, image, cls=None, steps: int = 100, lr: float = 0.05, progress: Progress = None
) -> dict:
    """Low-resolution photo -> model resolution by projecting onto the generator.

    Start from E's code of the bicubic-upsampled input, then optimise z so that the area-downsampled
    output matches the input. Returns {"image": PIL at model resolution, "psnr": dB of the
    downsampled result against the input, "input_size": (w, h), "class", "probability"}.
    """
    img = open_image(image, name="image")
    r = model.config.resolution
    w, h = img.size
    if min(w, h) >= r:
        raise ImageError(f"the image is already {w}x{h}; super-resolution takes photos smaller than {r} px")
    img = img.crop(center_crop_box(w, h))
    s = img.size[0]
    lo = uint8_to_float(pil_to_uint8(img))[None].to(model.device)
    up = F.interpolate(lo, size=(r, r), mode="bicubic", align_corners=False).clamp(-1, 1)
    z, cls_idx, prob = encode(model, up, cls)
    c = torch.tensor([cls_idx], device=model.device)
    z = z[None].to(model.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    model.generator.eval()
    for i in range(steps):
        down = F.interpolate(model.generator(z, c), size=(s, s), mode="area")
        loss = (down - lo).pow(2).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and i % 10 == 0:
            progress((i + 1) / steps, f"step {i + 1}/{steps}")
    with torch.no_grad():
        out = model.generator(z, c).float()
        down = F.interpolate(out, size=(s, s), mode="area")
        db = psnr(down.clamp(-1, 1), lo).item()
    return {"image": to_pil(out[0].cpu()), "psnr": db, "input_size": (w, h), "class": cls_idx, "probability": prob}


def augment(
    model: CVAEGAN,
    out: str | os.PathLike,
    per_class: int,
    first_seed: int = 0,
    classes=None,
    truncation: float = 1.0,
    progress: Progress = None,
) -> Path:
    """Write an ImageFolder of generated images: out/<class_folder>/<seed>.png + out/seeds.csv."""
    out = Path(out)
    idx = class_indices(model, classes) if classes is not None else list(range(model.config.num_classes))
    rows = []
    for n, c in enumerate(idx):
        folder = model.config.class_folders[c]
        seeds = list(range(first_seed + c * per_class, first_seed + (c + 1) * per_class))
        imgs = sample(model, c, seeds, truncation, batch_size=1)
        for s, x in zip(seeds, imgs):
            save_png(to_pil(x), out / folder / f"{s}.png")
            rows.append((f"{folder}/{s}.png", folder, model.config.class_names[c], c, s, truncation))
        if progress:
            progress((n + 1) / len(idx), folder)
    with open(out / "seeds.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(["path", "class_folder", "class_name", "class_index", "seed", "truncation"])
        wr.writerows(rows)
    return out
