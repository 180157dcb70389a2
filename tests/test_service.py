"""The demo's request functions (what every app event calls), without any UI."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cvaegan import CVAEGAN, inference as I, service as S
from cvaegan.images import ImageError

from conftest import draw_shape


@pytest.fixture(scope="module")
def model(trained_with_directions):
    return CVAEGAN.from_pretrained(str(trained_with_directions))


def test_generate_seeds_and_determinism(model):
    imgs, used = S.generate(model, "Square 1", 5, False, 3, 1.0)
    assert used == 5 and len(imgs) == 3 and imgs[0].size == (32, 32)
    again, _ = S.generate(model, 1, 6, False, 1, 1.0)
    assert np.array_equal(np.asarray(imgs[1]), np.asarray(again[0]))  # seed 6 is seed 6
    _, rnd = S.generate(model, 1, None, True, 1, 1.0)
    assert 0 <= rnd < 2**31


@pytest.mark.parametrize(
    "seed,count,trunc,match",
    [
        (-1, 1, 1.0, "seed"),
        (1.5, 1, 1.0, "whole"),
        (None, 1, 1.0, "enter a seed"),
        (0, 0, 1.0, "number of samples"),
        (0, 99, 1.0, "number of samples"),
        (0, 1, float("nan"), "truncation"),
        (0, 1, 9.0, "truncation"),
        (2**63 - 1, 2, 1.0, "too large"),
        ("abc", 1, 1.0, "seed"),
    ],
)
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
    before, after, text = S.inpaint(model, value, S.AUTO, 2, 0)
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
    photo = draw_shape(1, 64, np.random.default_rng(3))
    rec, text, db = S.reconstruct(model, photo, "Square 1")
    assert rec.size == (32, 32) and text == "Square 1" and db > 10
    _, _, refined_db = S.reconstruct(model, photo, "Square 1", 30)
    assert refined_db > db
    with pytest.raises(ValueError, match="refinement steps"):
        S.reconstruct(model, photo, "Square 1", S.MAX_REFINE + 1)
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


def test_model_card_inlines_its_pictures_and_names_empty_headers(trained_export, tmp_path):
    import shutil

    from cvaegan.hub import load_folder

    w = tmp_path / "w"
    shutil.copytree(trained_export, w)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(w / "curves.png")
    (w / "README.md").write_text(
        "---\nlicense: other\n---\n# Card\n| | |\n|---|---|\n| a | 1 |\n"
        "Loss curves: ![losses](curves.png) ![gone](missing.png) ![far](../x.png)\nText.\n"
    )
    card = S._card(load_folder(w))
    assert card.startswith("# Card\n| item | value |\n|---|---|")  # no empty header row
    assert card.count("data:image/png;base64,") == 1 and "![losses](data:image/png" in card
    assert "missing.png" not in card and "../x.png" not in card and card.endswith("Text.")


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


# ------------------------------------------------------------------ the demo's newer requests


def test_identity_labels_are_readable_and_values_unchanged(model):
    import copy

    m = copy.deepcopy(model)
    m.config.class_names = ["celeba_07201", "Tony Blair", "celeba_07203", "lfw_12"]
    assert S.class_display_names(m) == [
        "Person 1 (CelebA 07201)",
        "Tony Blair",
        "Person 2 (CelebA 07203)",
        "Person 3 (LFW 12)",
    ]
    choices = S.class_choices(m, auto=True)
    assert choices[0] == (S.AUTO, S.AUTO) and [v for _, v in choices[1:]] == m.config.class_names
    m.config.class_names = ["class_3", "class_4", "x", "y"]
    assert S.class_display_names(m)[:2] == ["Class 1 (class 3)", "Class 2 (class 4)"]


def test_slider_labels_say_what_plus_does():
    assert S.direction_hint("attr_yaw") == "head turn (+ turns towards the picture's right)"
    assert S.direction_hint("pc2") == "principal direction 2"
    assert S.direction_hint("attr_hat_size") == "hat size (+ = more)"
    assert "std" not in S.direction_hint("attr_smile")


def test_explore_pair_original_beside_edit_and_from_a_photo(model):
    orig, edited, note = S.explore_pair(model, "Square 1", 4, 1.0, None, {})
    ref, _ = S.generate(model, "Square 1", 4, False, 1, 1.0)
    assert np.array_equal(np.asarray(orig), np.asarray(ref[0])) and np.array_equal(np.asarray(edited), np.asarray(orig))
    assert "seed 4" in note
    name = model.config.directions[0]
    _, moved, _ = S.explore_pair(model, "Square 1", 4, 1.0, None, {name: 3.0})
    assert not np.array_equal(np.asarray(moved), np.asarray(orig))
    photo = draw_shape(2, 48, np.random.default_rng(5))
    a, b, note = S.explore_pair(model, "Triangle 2", 0, 1.0, photo, {})
    rec, _, _ = S.reconstruct(model, photo, "Triangle 2")  # the photo's E code, unedited = its reconstruction
    assert np.array_equal(np.asarray(a), np.asarray(rec)) and "E's code" in note


def test_seamless_paste_keeps_known_pixels_and_hides_the_seam():
    from cvaegan import blend

    h, w = 60, 90
    ramp = np.linspace(40, 200, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    photo = ramp.round().astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:40, 30:60] = True
    fill = np.full((h, w, 3), 10.0, np.float32)  # far too dark everywhere: a hard paste leaves a seam
    out = blend.seamless_paste(photo, fill, mask).astype(np.float32)
    assert np.array_equal(out[~mask], photo[~mask])
    # across the hole's left and right edges the result continues the photo instead of jumping to 10
    jump = max(abs(out[30, 30] - out[30, 29]).max(), abs(out[30, 59] - out[30, 60]).max())
    hard = min(photo[30, 29].max(), photo[30, 60].max()) - 10  # what pasting the fill as it is would leave
    assert jump < 20 and hard > 80, (jump, hard)
    # a constant fill plus the harmonic correction = the ramp (Poisson blending; push-pull was 6.8 grey levels off)
    assert abs(out[mask] - ramp[mask]).mean() < 1
    # a fill that already matches the photo is kept (the correction is zero)
    same = blend.seamless_paste(photo, ramp, mask)
    assert abs(same.astype(np.float32) - ramp).max() <= 1


def test_inpaint_at_the_photos_own_resolution(model, monkeypatch):
    from cvaegan import blend

    photo = np.asarray(draw_shape(1, 96, np.random.default_rng(7)).resize((150, 96)))
    mask = np.zeros(photo.shape[:2], bool)
    mask[30:60, 100:140] = True  # off-centre: the window moves to cover it
    left, top, side = blend.window_box(mask)
    assert side == 96 and top == 0 and left <= 100 and left + side >= 140
    r = blend.inpaint(model, photo, mask, None, 2, 0)
    out = np.asarray(r["image"])
    assert out.shape == photo.shape and np.array_equal(out[~mask], photo[~mask]) and (out[mask] != photo[mask]).any()
    assert len(r["top"]) == 3 and r["class"] == r["top"][0][0] and r["top"][0][1] >= r["top"][1][1]
    seen = []  # C guesses from the window with its hole filled smoothly (the harmonic fill), not a flat colour
    monkeypatch.setattr(blend, "top_classes", lambda m, x, k=3: seen.append(x) or [(1, 0.9), (0, 0.05), (2, 0.05)])
    fills = []  # computed once: C's guess and the loop's start share it
    real_fill = I.fill_smooth
    monkeypatch.setattr(I, "fill_smooth", lambda *a: fills.append(1) or real_fill(*a))
    blend.inpaint(model, photo, mask, None, 1, 0)
    assert len(fills) == 1
    win = torch.from_numpy(photo[:, left : left + side].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    x_small = F.interpolate(
        win, size=(model.config.resolution,) * 2, mode="bicubic", align_corners=False, antialias=True
    ).clamp(-1, 1)
    hole = torch.from_numpy(mask[:, left : left + side].astype(np.float32))[None, None]
    m_small = F.adaptive_max_pool2d(hole, (model.config.resolution,) * 2) > 0
    assert len(seen) == 1 and torch.allclose(seen[0], I.fill_smooth(x_small, m_small), atol=1e-5)
    wide = np.zeros(photo.shape[:2], bool)
    wide[40:50, 5:145] = True  # wider than the short side: a larger, padded window
    assert blend.window_box(wide)[2] == 140
    out = np.asarray(blend.inpaint(model, photo, wide, 1, 1, 0)["image"])
    assert np.array_equal(out[~wide], photo[~wide])


def test_inpaint_full_lists_cs_top_three_and_says_when_unsure(model):
    photo = np.asarray(draw_shape(0, 64, np.random.default_rng(8)))
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[10:30, 10:30, 3] = 255
    _, after, text = S.inpaint_full(model, {"background": photo, "layers": [layer]}, S.AUTO, 2, 0)
    assert after.size == (64, 64) and text.count("(p = ") == 3
    assert S.top_text(model, [(0, 0.3), (1, 0.2), (2, 0.1)]).endswith("pick the class yourself if you know it")
    assert "not confident" not in S.top_text(model, [(0, 0.9), (1, 0.05), (2, 0.01)])
    _, _, text = S.inpaint_full(model, {"background": photo, "layers": [layer]}, "Circle 0", 2, 0)
    assert text == "Circle 0"


def test_editor_value_upscales_and_shows_the_mask(tmp_path):
    small = Image.new("RGB", (64, 64), (30, 60, 90))
    mask = np.zeros((64, 64), bool)
    mask[16:32, 8:40] = True
    v = S.editor_value(small, mask)
    bg, layer = Image.open(v["background"]), Image.open(v["layers"][0])
    assert bg.size == (256, 256) and layer.mode == "RGBA"  # the brush fits a 256-px canvas
    painted = np.asarray(layer)[:, :, 3] > 0
    assert painted.sum() == mask.sum() * 16
    photo, m = S.editor_to_image_and_mask(v)  # what the inpaint handler reads back: the same mask
    assert np.array_equal(m, painted) and photo.size == (256, 256)
    assert S.editor_value(small)["layers"] == []


def test_examples_come_from_the_package_whatever_the_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    pairs = S.examples_for("faces")
    assert pairs and all(i.is_file() and m.is_file() and i.is_absolute() for i, m in pairs)
    assert S.examples_for("no-such-model") == []


def test_interpolation_gif_has_a_readable_name(model):
    _, gif = S.interpolate(model, ("Circle 0", 1, None), ("Square 1", 2, None), "both", 3)
    assert Path(gif).name == "interpolation_Circle_0_to_Square_1_3_frames.gif"
    assert Path(gif).parent.parent == S.output_dir()
