"""Input images and masks of every kind: modes, EXIF rotation, broken files, decompression bombs; the harmonic fill."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cvaegan.images import MAX_PIXELS, ImageError, harmonic_fill, load_tensor, membrane, open_image, open_mask


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "RGB"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (20, 10))
    if mode == "P":
        img.info["transparency"] = 0
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    out = open_image(_png(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)
    x = load_tensor(_png(img, fmt), 16)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = open_image(_png(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"this is text, not pixels", "not an image"),
        (None, "truncated"),
    ],
)
def test_broken_files(data, match):
    if data is None:
        data = _png(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200]
    with pytest.raises(ImageError, match=match):
        open_image(data)


def test_decompression_bomb_refused_before_decoding():
    header_only = _png(Image.new("L", (1, 1)))
    big = Image.new("1", (9000, 9000))  # 81 M pixels declared, tiny file
    with pytest.raises(ImageError, match="over the limit"):
        open_image(_png(big), max_pixels=MAX_PIXELS)
    assert open_image(header_only).size == (1, 1)


def test_extreme_aspect_ratio_is_centre_cropped():
    x = load_tensor(_png(Image.new("RGB", (1000, 3), (0, 255, 0))), 8)
    assert x.shape == (3, 8, 8)


def test_masks_from_any_image():
    a = np.zeros((10, 10), np.uint8)
    a[2:4, 2:4] = 128  # non-binary grey still counts as "missing"
    m = open_mask(_png(Image.fromarray(a)), (10, 10))
    assert m.sum() == 4
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[5:, :, 3] = 255
    assert open_mask(_png(Image.fromarray(rgba, "RGBA")), (10, 10)).sum() == 50
    assert open_mask(a, (20, 20)).sum() == 16  # another size is resized (nearest)
    assert not open_mask(np.zeros((4, 4)), (4, 4)).any()


def _jacobi(values: torch.Tensor, hole: torch.Tensor, sweeps: int) -> torch.Tensor:
    """Laplace's equation in the hole by plain Jacobi sweeps (slow, obviously right): the reference."""
    k = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]]).expand(3, 1, 3, 3)
    est = values.clone()
    for _ in range(sweeps):
        avg = F.conv2d(F.pad(est[None], (1, 1, 1, 1), mode="replicate"), k, groups=3)[0]
        est = torch.where(hole, avg, values)
    return est


def test_harmonic_fill_solves_laplaces_equation_in_the_hole():
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    ramp = torch.stack([xx / 49, yy / 39, (xx - 2 * yy) / 100])
    hole = torch.zeros(40, 50, dtype=torch.bool)
    hole[8:30, 12:40] = True
    out = harmonic_fill(torch.where(hole, 5.0, ramp), hole)  # whatever the hole held is ignored
    assert (out - ramp).abs().max() < 2e-3  # a linear ramp is harmonic: restored exactly
    # the push-pull membrane it starts from is far off, so the solver does the work
    assert (membrane(ramp, (~hole).float()) - ramp).abs().max() > 0.05
    # a random photo, a hole touching two image edges (Neumann there): the same as slow Jacobi sweeps
    x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    hole = torch.zeros(24, 24, dtype=torch.bool)
    hole[:10, 14:] = True
    out = harmonic_fill(x, hole, tol=1e-6)
    assert torch.equal(out[:, ~hole], x[:, ~hole])  # known pixels exactly as given
    assert (out - _jacobi(x, hole, 5000)).abs().max() < 1e-3
    assert torch.equal(harmonic_fill(x, torch.zeros_like(hole)), x)  # nothing to fill
    assert torch.equal(harmonic_fill(x, torch.ones_like(hole)), torch.zeros_like(x))  # nothing known: zeros


def test_harmonic_fill_of_a_large_hole_starts_from_half_the_resolution():
    """Holes wider than COARSE_SIDE take only FINE_STEPS steps at full size, from the upsampled solution at half
    the resolution: that must already be the harmonic fill (a push-pull start would be far off after so few)."""
    from cvaegan import images

    g = torch.Generator().manual_seed(3)
    x = F.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(330, 330), mode="bicubic")[0]
    hole = torch.zeros(330, 330, dtype=torch.bool)
    hole[10:320, 20:310] = True
    assert 310 > images.COARSE_SIDE
    tight = harmonic_fill(x, hole, tol=1e-7, max_iter=3000)
    assert (harmonic_fill(x, hole) - tight)[:, hole].abs().mean() < 2e-3
    pushpull = images.membrane(x, (~hole).float())
    assert (pushpull - tight)[:, hole].abs().mean() > 2e-2
