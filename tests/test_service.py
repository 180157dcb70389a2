"""The demo's request functions (what every app event calls), without any UI."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvaegan import CVAEGAN, service as S
from cvaegan.images import ImageError

from conftest import draw_shape


@pytest.fixture(scope="module")
def model(trained_export):
    return CVAEGAN.from_pretrained(str(trained_export))


def test_generate_seeds_and_determinism(model):
    imgs, used = S.generate(model, "Square 1", 5, False, 3, 1.0)
    assert used == 5 and len(imgs) == 3 and imgs[0].size == (32, 32)
    again, _ = S.generate(model, 1, 6, False, 1, 1.0)
    assert np.array_equal(np.asarray(imgs[1]), np.asarray(again[0]))  # seed 6 is seed 6
    _, rnd = S.generate(model, 1, None, True, 1, 1.0)
    assert 0 <= rnd < 2**31


@pytest.mark.parametrize("seed,count,trunc,match", [
    (-1, 1, 1.0, "seed"), (1.5, 1, 1.0, "whole"), (None, 1, 1.0, "enter a seed"), (0, 0, 1.0, "number of samples"),
    (0, 99, 1.0, "number of samples"), (0, 1, float("nan"), "truncation"), (0, 1, 9.0, "truncation"),
    (2**63 - 1, 2, 1.0, "too large"), ("abc", 1, 1.0, "seed"),
])
def test_generate_rejects_bad_values(model, seed, count, trunc, match):
    with pytest.raises(ValueError, match=match):
        S.generate(model, 0, seed, False, count, trunc)


def test_explore_zero_sliders_equal_generate(model):
    img = S.explore(model, 2, 4, 1.0, {})
    ref, _ = S.generate(model, 2, 4, False, 1, 1.0)
    assert np.array_equal(np.asarray(img), np.asarray(ref[0]))
    with pytest.raises(ValueError, match="slider"):
        S.explore(model, 2, 4, 1.0, {"pc1": float("nan")})


def test_swap_grid_captions(model):
    grid = S.swap_grid(model, 3, 1.0)
    assert [c for _, c in grid] == model.config.class_names


def test_interpolate_returns_frames_and_gif(model):
    photo = draw_shape(3, 32, np.random.default_rng(0))
    frames, gif = S.interpolate(model, ("Circle 0", 1, None), ("auto", None, photo), "both", 5)
    assert len(frames) == 5 and Image.open(gif).format == "GIF"
    with pytest.raises(ValueError, match="needs a class"):
        S.interpolate(model, ("auto", 1, None), (0, 1, None), "z", 3)
    with pytest.raises(ValueError, match="frames"):
        S.interpolate(model, (0, 1, None), (1, 1, None), "z", 1000)


def test_editor_value_to_mask_and_inpaint(model):
    photo = np.asarray(draw_shape(0, 40, np.random.default_rng(1)))
    layer = np.zeros((40, 40, 4), np.uint8)
    layer[5:15, 20:35] = (255, 255, 255, 255)
    value = {"background": photo, "layers": [layer], "composite": None}
    img, mask = S.editor_to_image_and_mask(value)
    assert mask.sum() == 150 and img.size == (40, 40)
    before, after, text = S.inpaint(model, value, "auto (C decides)", 2, 0)
    out = np.asarray(after)
    assert np.array_equal(out[~mask], photo[~mask]) and (out[mask] != photo[mask]).any()
    assert "C's guess" in text
    with pytest.raises(ValueError, match="mask is empty"):
        S.inpaint(model, {"background": photo, "layers": [], "composite": None}, "auto", 2, 0)
    with pytest.raises(ImageError, match="upload a photo"):
        S.inpaint(model, None, "auto", 2, 0)
    with pytest.raises(ValueError, match="iterations"):
        S.inpaint(model, value, "auto", 0, 0)


def test_enhance_and_reconstruct(model):
    small = draw_shape(1, 12, np.random.default_rng(2))
    img, text = S.enhance(model, small, "auto", 20)
    assert img.size == (32, 32) and "PSNR" in text
    rec, text = S.reconstruct(model, draw_shape(1, 64, np.random.default_rng(3)), "Square 1")
    assert rec.size == (32, 32) and text == "Square 1"
    with pytest.raises(ImageError):
        S.reconstruct(model, None, "auto")
    with pytest.raises(ValueError, match="unknown class"):
        S.reconstruct(model, small, "Nope")


def test_registry_loads_once_and_falls_back(trained_export, monkeypatch, tmp_path):
    from cvaegan import hub

    bundled = tmp_path / "weights"
    import shutil
    shutil.copytree(trained_export, bundled / "faces")
    monkeypatch.setattr(hub, "BUNDLED_DIR", bundled)
    monkeypatch.setattr(S, "BUNDLED_DIR", bundled)
    reg = S.ModelRegistry(str(tmp_path / "missing-folder"))
    assert reg.choices == [str(tmp_path / "missing-folder"), "faces"]
    bad = reg.get(reg.default)
    assert "could not load" in bad.resolved.notice and bad.resolved.source.startswith("bundled")
    ok = reg.get("faces")
    assert ok is reg.get("faces") and len(ok.thumbnails) == 4
    with pytest.raises(ValueError, match="unknown model"):
        reg.get("nope")


def test_direction_labels():
    assert S.direction_label("pc3") == "principal direction 3"
    assert S.direction_label("attr_yaw") == "head turn"
    assert S.direction_label("attr_hat_size") == "hat size"


def test_model_card_drops_relative_picture_links(trained_export, tmp_path):
    import shutil

    from cvaegan.hub import load_folder

    w = tmp_path / "w"
    shutil.copytree(trained_export, w)
    (w / "README.md").write_text("---\nlicense: other\n---\n# Card\n![samples](samples.png)\nText.\n")
    model = load_folder(w)
    assert S._card(model) == "# Card\n\nText."


def test_results_become_png_files_of_their_own_and_old_ones_are_swept():
    """Gradio gets result images as unique files (copied into its cache atomically), never as PIL
    images (which Gradio 6 rewrites in place under a content hash: a race between identical requests)."""
    a = Image.new("RGB", (8, 8), (10, 20, 30))
    out = S.as_files([(a, "cap"), (a, "cap")])
    (p1, c1), (p2, c2) = out
    assert c1 == c2 == "cap" and p1 != p2  # identical images still get distinct files
    assert Path(p1).parent == S.output_dir() and np.array_equal(np.asarray(Image.open(p1)), np.asarray(a))
    before, after = S.as_files((a, a))
    assert isinstance(before, str) and isinstance(after, str)
    assert S.as_files({"background": a, "n": 3})["n"] == 3 and S.as_files("x.gif") == "x.gif"
    old = time.time() - S.OUTPUT_TTL_S - 5
    os.utime(p1, (old, old))
    assert S.sweep_outputs(force=True) >= 1
    assert not Path(p1).exists() and Path(p2).exists()
