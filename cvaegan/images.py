"""Image I/O and conversions: open any image safely, crop/resize to the model, tensors <-> PIL, grids, masks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Refuse images above this many pixels before decoding them (decompression-bomb guard).
MAX_PIXELS = 40_000_000


class ImageError(InputError):
    """An input image or mask that cannot be used; the message says why and what to do."""


def open_raw(src, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open a path, bytes, numpy array or PIL image, EXIF-rotated, in its own mode (not converted).

    Raises ImageError for missing, empty, truncated, non-image or too-large inputs; the size is
    checked from the header, before the pixels are decoded.
    """
    label = name or (str(src) if isinstance(src, (str, os.PathLike)) else "image")
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = _from_array(src, label)
    else:
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if not path.is_file():
                raise ImageError(f"{label}: file not found")
            data = path.read_bytes()
        elif isinstance(src, (bytes, bytearray)):
            data = bytes(src)
        else:
            raise ImageError(f"{label}: expected a path, bytes, array or PIL image, got {type(src).__name__}")
        if not data:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise ImageError(f"{label}: not an image file PIL can read (PNG, JPEG, WebP, ...): {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{label}: the image data is broken or truncated ({e})") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{label}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; resize it first"
        )
    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageError(f"{label}: the image data is broken or truncated ({e})") from e


def open_image(src, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open any image as RGB (see open_raw). Every PIL mode is accepted (1, L, LA, P, RGBA, CMYK,
    I;16, F, ...); transparency is composited on white, 16-bit and float images are rescaled."""
    return _to_rgb(open_raw(src, max_pixels, name))


def _from_array(a: np.ndarray, label: str) -> Image.Image:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"{label}: array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float64))
        a = np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        return Image.fromarray(a[:, :, 0], "L")
    return Image.fromarray(a, "RGB" if a.shape[2] == 3 else "RGBA")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
        img = Image.fromarray((np.nan_to_num(a) * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_box(w: int, h: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) of side min(w, h)."""
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


def fit(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square and resize to resolution x resolution (antialiased)."""
    img = img.crop(center_crop_box(*img.size))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC, reducing_gap=3.0)
    return img


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def load_tensor(src, resolution: int, name: str | None = None) -> torch.Tensor:
    """Any image -> (3, R, R) float tensor in [-1, 1] (centre-cropped, resized)."""
    return uint8_to_float(pil_to_uint8(fit(open_image(src, name=name), resolution)))


def psnr(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR (dB) of x against target, both (B, 3, H, W) in [-1, 1] (peak-to-peak 2) -> (B,).
    mask: (B or 1, 1, H, W) bool; then the mean squared error runs over the masked pixels only."""
    err = ((x.detach().float() - target.detach().float().to(x.device)) / 2).pow(2)
    w = (torch.ones_like(err[:, :1]) if mask is None else mask.to(err.device).float()).expand_as(err)
    mse = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def membrane(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Smooth interpolation of `values` (C, H, W) known where weight (H, W) > 0 to every pixel
    (push-pull over an image pyramid: a fast stand-in for the harmonic membrane of Poisson cloning).
    Exact where weight is 1; zeros when nothing is known."""
    if not (weight > 0).any():
        return torch.zeros_like(values)
    v, w = values * weight, weight[None].clone()
    pyramid = [(v, w)]
    while min(v.shape[-2:]) > 1:
        v = F.avg_pool2d(v[None], 2, ceil_mode=True)[0]
        w = F.avg_pool2d(w[None], 2, ceil_mode=True)[0]
        pyramid.append((v, w))
    v, w = pyramid[-1]
    est = v / w.clamp(min=1e-8)
    if not (w > 0).all():  # a coarsest level with gaps: fill them with the mean of the known values
        est = torch.where(w > 0, est, (v.sum((1, 2), keepdim=True) / w.sum().clamp(min=1e-8)))
    for v, w in reversed(pyramid[:-1]):
        up = F.interpolate(est[None], size=v.shape[-2:], mode="bilinear", align_corners=False)[0]
        a = w.clamp(max=1.0)
        est = a * (v / w.clamp(min=1e-8)) + (1 - a) * up
    return est


COARSE_SIDE = 256  # harmonic_fill: boxes up to this side are solved to tolerance (at most 4 x side CG steps)
FINE_STEPS = 16  # larger boxes start from the half-resolution solution and take at most this many steps
_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _laplacian(f: torch.Tensor) -> torch.Tensor:
    """The grid graph's Laplacian of f (C, H, W): 4 f minus the 4 neighbours, edges replicated (Neumann)."""
    c = f.shape[0]
    nb = F.conv2d(F.pad(f[None], (1, 1, 1, 1), mode="replicate"), _CROSS.to(f).expand(c, 1, 3, 3), groups=c)[0]
    return 4 * f - nb


def harmonic_fill(
    values: torch.Tensor, hole: torch.Tensor, tol: float = 1e-3, max_iter: int | None = None
) -> torch.Tensor:
    """`values` (C, H, W) with the pixels where hole (H, W) is True replaced by the harmonic interpolation of
    the others: the solution of Laplace's equation inside the hole with the known pixels around it as the
    boundary (the membrane of Poisson image editing, Perez et al. 2003), 4-neighbour, Neumann at the image's
    edges. Solved by conjugate gradients on the hole's bounding box (with 2 known pixels around it) until the
    residual falls below `tol` of its start, in at most `max_iter` steps: by default 4 x the box's long side for
    boxes up to COARSE_SIDE, FINE_STEPS for larger ones. Boxes over 64 px start from the solution at half the
    resolution, upsampled (a cascade; at 64 px and below the push-pull `membrane` starts it), so a large hole
    costs a few full-size steps, not thousands."""
    hole = hole.to(torch.bool)
    if not hole.any():  # nothing to fill
        return values.clone()
    if hole.all():  # nothing to fill from
        return torch.zeros_like(values)
    ys, xs = torch.nonzero(hole, as_tuple=True)
    h, w = hole.shape
    # the box keeps 2 known pixels around the hole, so half the resolution still has fully known blocks
    y0, y1 = max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, h)
    x0, x1 = max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, w)
    v = values[:, y0:y1, x0:x1].float()
    m = hole[y0:y1, x0:x1].to(v)[None]
    side = max(y1 - y0, x1 - x0)
    u = torch.where(m > 0, _coarse_start(v, m[0] > 0) if side > 64 else membrane(v, 1 - m[0]), v)
    r = -_laplacian(u) * m
    p = r.clone()
    rs = (r * r).sum((1, 2), keepdim=True)
    stop = rs * tol**2
    for _ in range(max_iter if max_iter is not None else (4 * side if side <= COARSE_SIDE else FINE_STEPS)):
        if bool((rs <= stop).all()):
            break
        ap = _laplacian(p) * m
        alpha = rs / (p * ap).sum((1, 2), keepdim=True).clamp(min=1e-20)
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum((1, 2), keepdim=True)
        p = r + (rs_new / rs.clamp(min=1e-20)) * p
        rs = rs_new
    out = values.clone()
    out[:, y0:y1, x0:x1] = torch.where(m > 0, u.to(values.dtype), values[:, y0:y1, x0:x1])
    return out


def border_distance(hole: torch.Tensor) -> torch.Tensor:
    """(H, W) float: for each pixel where hole (H, W) is True, how many 8-neighbour steps it lies from the nearest
    known pixel (1 on the hole's rim); 0 outside the hole. A hole with nothing known around it gets H + W."""
    hole = hole.to(torch.bool)
    dist = torch.zeros(hole.shape)
    if not hole.any():
        return dist
    if hole.all():
        return torch.full(hole.shape, float(sum(hole.shape)))
    reached = (~hole).float()[None, None]
    step = 0
    while not bool(reached.all()):
        step += 1
        grown = F.max_pool2d(reached, 3, 1, 1)
        dist[(grown[0, 0] > 0) & (reached[0, 0] == 0)] = float(step)
        reached = grown
    return dist


def fill_smooth(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (B, 3, R, R) with the pixels where m (B, 1, R, R) is True filled by the harmonic interpolation of the
    known ones around them (`harmonic_fill`): the inpainting loop's first input, which E encodes, and what the
    class guess sees for a photo with a hole (the README's Evaluation compares both with a mean-colour fill)."""
    filled = [harmonic_fill(x[i], m[i, 0]) for i in range(x.shape[0])]
    return torch.where(m, torch.stack(filled), x)


def _coarse_start(v: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """harmonic_fill of v (C, H, W) at half the resolution (a 2x2 block is known when all its pixels are),
    upsampled bilinearly to (H, W): the fine solve's starting point. Push-pull when no block is fully known."""
    known = (~hole).float()[None]
    block_known = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse_hole = block_known[0] < 1
    if coarse_hole.all():
        return membrane(v, known[0])
    coarse = F.avg_pool2d((v * known)[None], 2, ceil_mode=True)[0] / block_known.clamp(min=1e-8)
    coarse = harmonic_fill(coarse, coarse_hole)
    return F.interpolate(coarse[None], size=v.shape[-2:], mode="bilinear", align_corners=False)[0]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) float in [-1, 1] -> uint8 (rounded, clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [-1, 1] -> RGB PIL image."""
    assert x.dim() == 3 and x.shape[0] == 3, f"expected (3, H, W), got {tuple(x.shape)}"
    return Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy(), "RGB")


def make_grid(x: torch.Tensor, ncol: int, pad: int = 2) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> one PIL image, `ncol` images per row, `pad` white pixels between."""
    n, _, h, w = x.shape
    nrow = (n + ncol - 1) // ncol
    canvas = torch.full((3, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    u8 = to_uint8(x)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = u8[i]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy(), "RGB")


def save_png(img: Image.Image, path: str | os.PathLike) -> None:
    """Save a PNG byte-identically for identical pixels (no timestamps or variable metadata)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def save_jpeg(img: Image.Image, path: str | os.PathLike, quality: int = 90) -> None:
    """Save a JPEG (for large picture sheets, where a PNG would weigh megabytes); same pixels, same bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, format="JPEG", quality=quality, optimize=True)


def open_mask(src, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """A mask image -> (H, W) bool array at `size` (w, h); True = missing pixel to fill.

    Any image works: alpha > 0 marks missing where the image has transparency that is not fully
    opaque everywhere; otherwise any non-zero (non-black) pixel marks missing. A mask of another
    size is resized (nearest).
    """
    label = name or "mask"
    if isinstance(src, np.ndarray):
        a = np.nan_to_num(src.astype(np.float64))
        if a.ndim == 3 and a.shape[2] in (2, 4) and a[:, :, -1].min() < a[:, :, -1].max():
            m = a[:, :, -1] > 0  # LA / RGBA with real transparency: painted = alpha > 0
        else:
            m = (a.max(axis=2) if a.ndim == 3 else a) > 0
    else:
        m = _mask_from_pil(open_raw(src, name=label))
    if m.ndim != 2:
        raise ImageError(f"{label}: mask must be 2-D, got shape {m.shape}")
    if (m.shape[1], m.shape[0]) != tuple(size):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)) > 127
    return m


def _mask_from_pil(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
        if alpha.min() < 255:
            return alpha > 0
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.nan_to_num(np.asarray(img, dtype=np.float64)) > 0
    return np.asarray(img.convert("L")) > 0
