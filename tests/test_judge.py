"""The judge's training options: the strong augmentation for data with few photos per class."""

import pytest
import torch

from cvaegan.data import load_images
from cvaegan.judge import JudgeError, augment_batch, load_judge, strong_augment_batch, train_judge


def _batch(n: int = 64, side: int = 32) -> torch.Tensor:
    g = torch.linspace(-1, 1, side)
    ramp = g.view(1, side).expand(side, side)
    img = torch.stack([ramp, g.view(side, 1).expand(side, side), -ramp])
    return img.expand(n, 3, side, side).contiguous()


def test_strong_augmentation_zooms_erases_and_is_seeded():
    x = _batch()
    a = strong_augment_batch(x, torch.Generator().manual_seed(3))
    b = strong_augment_batch(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    # erased rectangles are noise: neighbouring pixels jump far more than on the smooth ramp or its zoom
    jumps = (a[:, :, :, 1:] - a[:, :, :, :-1]).abs().amax((1, 2, 3))
    erased = (jumps > 0.5).float().mean().item()
    assert 0.3 < erased < 0.7  # about half of the images lose a rectangle
    # beyond the standard augmentation: the same generator state gives different pictures (zoom, erasing)
    std = augment_batch(x, torch.Generator().manual_seed(3))
    assert not torch.allclose(std, a)


def test_judge_records_its_augmentation_and_rejects_unknown(shapes_dir, tmp_path):
    data = load_images(shapes_dir, 32, progress=False)
    cfg = train_judge(data, tmp_path / "j", epochs=1, batch_size=16, widths=[8, 16], progress=False, augment="strong")
    assert cfg.training["augment"] == "strong"
    assert load_judge(tmp_path / "j").config.training["augment"] == "strong"
    with pytest.raises(JudgeError, match="unknown augmentation"):
        train_judge(data, tmp_path / "k", epochs=1, progress=False, augment="heavy")
