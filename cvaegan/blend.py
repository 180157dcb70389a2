"""Inpainting at the photo's own resolution: the model fills a square window around the hole at its own
resolution, the fill is upsampled smoothly and blended in without a seam; known pixels stay exact.

Photos are (H, W, 3) uint8 arrays or PIL images; masks (H, W) bool, True = missing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import inference as I
from .images import border_distance, harmonic_fill, to_pil
from .models import CVAEGAN

CONFIDENT = 0.5  # C's top probability below this: say that C is not sure, and suggest picking a class
DEFAULT_ITERATIONS = I.DEFAULT_ITERATIONS  # the app's slider starts here, and `cvaegan evaluate` measures it


def window_box(mask: np.ndarray) -> tuple[int, int, int]:
    """The square window (left, top, side) the model sees: as large as the photo's short side (a model
    trained on whole faces or birds needs the whole subject), centred on the hole, inside the photo
    when it fits. A hole wider than the short side gets a larger window (padded by edge replication)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(min(w, h), y1 - y0, x1 - x0))

    def place(lo, hi, size):
        start = (lo + hi) // 2 - side // 2
        return int(min(max(start, 0), size - side)) if side <= size else int((size - side) // 2)

    return place(x0, x1, w), place(y0, y1, h), side


def _crop(a: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """a[top:top+side, left:left+side] with edge replication where the window leaves the array."""
    h, w = a.shape[:2]
    ys = np.clip(np.arange(top, top + side), 0, h - 1)
    xs = np.clip(np.arange(left, left + side), 0, w - 1)
    return a[ys][:, xs]


def seamless_paste(photo: np.ndarray, fill: np.ndarray, mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """Paste fill (H, W, 3) float into photo (H, W, 3) uint8 where mask (H, W) is True, so that it meets the known
    pixels around the hole without a seam (Poisson blending, Perez et al. 2003): inside the hole the result is
    fill + the harmonic interpolation (`harmonic_fill`) of photo - fill from the pixels around the hole, that is
    the photo's own smooth fill of the hole plus the fill's detail (fill minus its own smooth fill).
    feather > 0 (pixels): the detail fades in from the hole's rim, scaled by min(1, (d - 1) / feather) at d steps
    from the nearest known pixel (`border_distance`), so the rim keeps the photo's smooth fill and holes narrower
    than the feather get little of the model's detail. Pixels outside the mask are returned exactly."""
    assert photo.shape[:2] == mask.shape == fill.shape[:2], (photo.shape, mask.shape, fill.shape)
    src = torch.from_numpy(photo.astype(np.float32)).permute(2, 0, 1)
    gen = torch.from_numpy(np.asarray(fill, np.float32)).permute(2, 0, 1)
    m = torch.from_numpy(mask)
    corrected = gen + harmonic_fill(torch.where(m, 0.0, src - gen), m)
    if feather > 0:
        detail = gen - harmonic_fill(gen, m)
        keep = ((border_distance(m) - 1) / feather).clamp(0, 1)
        corrected = corrected - (1 - keep) * detail
    out = torch.where(m[None], corrected.round().clamp(0, 255), src)
    return out.permute(1, 2, 0).numpy().astype(np.uint8)


@torch.no_grad()
def top_classes(model: CVAEGAN, x: torch.Tensor, k: int = 3) -> list[tuple[int, float]]:
    """The k most likely classes for one image x (1, 3, R, R) in [-1, 1] with its hole filled smoothly, by the
    weights' class guesser or else C (`inference.guess_probabilities`) -> [(index, probability), ...]."""
    probs = I.guess_probabilities(model, x)[0]
    p, i = probs.topk(min(k, len(probs)))
    return [(int(a), float(b)) for a, b in zip(i, p)]


def inpaint(
    model: CVAEGAN,
    photo,
    mask: np.ndarray,
    cls: int | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    refine_steps: int = 0,
    progress=None,
    feather: float | None = None,
    feathers=None,
) -> dict:
    """Fill the masked pixels of a photo of any size at its own resolution: the one inpainting pipeline
    that the app, the CLI (`inference.inpaint`) and `cvaegan evaluate` all run.

    photo: PIL RGB or (H, W, 3) uint8; mask: (H, W) bool, True = missing (not empty).
    The model inpaints the square window of the photo around the hole at its resolution (the paper's
    encode-generate-paste loop); the fill is upsampled (bicubic) and pasted seamlessly (`seamless_paste`).
    cls: class index, or None to let the class guess decide on the window (holes filled smoothly,
    `inference.fill_smooth`; the weights' guesser, or C: `top_classes`). feather: the detail feather in model pixels
    (`seamless_paste`; None: the weights' `inpaint_feather`, set by `cvaegan fit-feather`, else 0).
    Returns {"image": PIL at the photo's size, "class": index, "top": the guess's [(index, p)] top-3 or [] when
    the class was given, "box": (left, top, side) of the window, "model_image": PIL of the window at the
    model's resolution with the fill pasted in}; with `feathers` (model pixels) also "feathered": {feather: PIL
    at the photo's size}, the same fill pasted with each of them (one model pass for all, as `cvaegan fit-feather`
    compares them).
    """
    src = np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo, dtype=np.uint8)
    assert src.ndim == 3 and src.shape[2] == 3 and mask.shape == src.shape[:2], (src.shape, mask.shape)
    if not mask.any():
        raise ValueError("the mask is empty: paint over the part of the photo to fill in")
    feather = model.config.inpaint_feather if feather is None else float(feather)
    others = [float(f) for f in (feathers or ())]
    for f in (feather, *others):
        if not f >= 0:
            raise ValueError(f"feather must be 0 or more model pixels, got {f}")
    r = model.config.resolution
    left, top, side = window_box(mask)
    h, w = mask.shape
    win = _crop(src, left, top, side)
    yy, xx = np.mgrid[top : top + side, left : left + side]
    outside = (yy < 0) | (yy >= h) | (xx < 0) | (xx >= w)  # replicated edge pixels: the model refills them
    wmask = _crop(mask, left, top, side) & ~outside
    x = torch.from_numpy(win.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    x_small = F.interpolate(x, size=(r, r), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    hole = torch.from_numpy((wmask | outside).astype(np.float32))[None, None]
    m_small = (
        F.adaptive_max_pool2d(hole, (r, r)) > 0 if side >= r else F.interpolate(hole, size=(r, r), mode="nearest") > 0
    )  # every model pixel touching the hole is refilled
    top3: list[tuple[int, float]] = []
    start = I.fill_smooth(x_small, m_small)  # the loop's first input, and what the "auto" guess sees
    if cls is None:
        top3 = top_classes(model, start)
        cls = top3[0][0]
    gen = I.inpaint_tensor(model, x_small, m_small, cls, iterations, refine_steps, progress=progress, start=start).cpu()
    fill = F.interpolate(gen, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
    fill = ((fill[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    ys, xs = np.nonzero(mask)  # every masked pixel lies in the window

    def paste(f: float) -> Image.Image:
        out_win = seamless_paste(win, fill, wmask, f * side / r)  # model pixels -> the window's
        out = src.copy()
        out[ys, xs] = out_win[ys - top, xs - left]
        return Image.fromarray(out, "RGB")

    result = {
        "image": paste(feather),
        "class": int(cls),
        "top": top3,
        "box": (left, top, side),
        "model_image": to_pil(torch.where(m_small, gen, x_small)[0]),
    }
    if feathers is not None:
        result["feathered"] = {f: result["image"] if f == feather else paste(f) for f in others}
    return result
