"""Inference functions on a tiny model trained on coloured shapes: determinism, shapes, endpoints,
directions, inpainting keeps known pixels, super-resolution matches its input, augment's files."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import CVAEGAN, inference as I
from cvaegan.data import load_images
from cvaegan.directions import check_directions, compute_directions, encoder_means
from cvaegan.hub import save_directions
from cvaegan.images import psnr, to_pil
from cvaegan.seeds import z_from_seeds

from conftest import draw_shape


@pytest.fixture(scope="module")
def model(trained_export):
    return CVAEGAN.from_pretrained(str(trained_export))


def test_sample_deterministic_and_independent_of_batch(model):
    a = I.sample(model, "Triangle 2", [3, 4, 5])
    b = I.sample(model, 2, [5])
    assert a.shape == (3, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    t = I.sample(model, 2, [5], truncation=0.0)
    assert torch.equal(t, I.sample(model, 2, [6], truncation=0.0))  # no variation left


def test_unknown_class_lists_valid_names(model):
    with pytest.raises(ValueError, match="unknown class 'Hexagon'.*Circle 0"):
        I.sample(model, "Hexagon", [0])
    with pytest.raises(ValueError, match="out of range"):
        I.sample(model, 9, [0])


def test_swap_keeps_z_and_changes_class(model):
    z = z_from_seeds([7], model.config.z_dim)[0]
    grid = I.swap(model, z, [0, 1, 2, 3])
    direct = torch.cat([I.sample(model, c, [7]) for c in range(4)])
    assert torch.allclose(grid, direct, atol=1e-5)
    pred, _ = I.classify(model, grid)
    assert (pred == torch.arange(4)).float().mean() >= 0.75


def test_interpolation_endpoints_equal_direct_results(model):
    a, b = I.endpoint(model, 0, 11), I.endpoint(model, "Cross 3", 12)
    for mode in ("z", "class", "both"):
        frames = I.interpolate(model, a, b, frames=5, mode=mode)
        assert frames.shape == (5, 3, 32, 32)
        assert torch.equal(frames[0], I.sample(model, 0, [11])[0])
    both = I.interpolate(model, a, b, frames=5, mode="both")
    assert torch.equal(both[-1], I.sample(model, 3, [12])[0])
    zonly = I.interpolate(model, a, b, frames=3, mode="z")
    assert torch.equal(zonly[-1], I.sample(model, 0, [12])[0])  # z of B, class of A


def test_interpolate_from_photo_and_gif(model, tmp_path):
    photo = draw_shape(1, 32, np.random.default_rng(3))
    a = I.endpoint(model, image=photo)
    assert a[1] == 1  # C recognises the square
    frames = I.interpolate(model, a, I.endpoint(model, 2, 0), frames=4)
    I.save_gif(frames, tmp_path / "m.gif")
    gif = Image.open(tmp_path / "m.gif")
    assert gif.n_frames == 6  # 4 forwards + 2 back (bounce)


def test_directions_amount_zero_is_identity_and_round_trip(trained_export, shapes_dir, tmp_path):
    import shutil

    w = tmp_path / "w"
    shutil.copytree(trained_export, w)
    m = CVAEGAN.from_pretrained(str(w))
    data = load_images(shapes_dir, 32, progress=False)
    compute_directions(m, data.images, data.labels, k=3, attributes=data.attributes)
    assert m.config.directions == ["attr_x", "pc1", "pc2", "pc3"]
    assert torch.allclose(m.directions.norm(dim=1), torch.ones(4), atol=1e-5)
    z = z_from_seeds([1], m.config.z_dim)[0]
    assert torch.equal(I.edit(m, z, {"pc1": 0.0, "attr_x": 0.0}), z)
    moved = I.edit(m, z, {"pc1": 2.0})
    assert torch.allclose((moved - z).norm(), 2.0 * m.direction_scales[1], atol=1e-5)
    with pytest.raises(ValueError, match="unknown direction"):
        I.edit(m, z, {"nope": 1.0})
    with pytest.raises(ValueError, match="finite"):
        I.edit(m, z, {"pc1": float("nan")})
    save_directions(m, w)
    again = CVAEGAN.from_pretrained(str(w))
    assert again.config.directions == m.config.directions
    assert torch.equal(again.directions, m.directions)
    # the attribute direction predicts its attribute along itself: the regression's slope is positive
    mu = encoder_means(m, data.images, data.labels)
    proj = (mu - mu.mean(0)) @ m.directions[0]
    y = data.attributes["attr_x"]
    assert torch.corrcoef(torch.stack([proj, y]))[0, 1] > 0


def test_reconstruct_predicts_class(model):
    photo = draw_shape(2, 48, np.random.default_rng(5))
    x, idx, prob = I.reconstruct(model, photo)
    assert x.shape == (3, 32, 32) and idx == 2 and 0 < prob <= 1
    _, idx2, prob2 = I.reconstruct(model, photo, cls="Circle 0")
    assert idx2 == 0 and prob2 is None


def test_refined_reconstruction_is_closer_and_never_touches_g(model):
    photo = draw_shape(1, 48, np.random.default_rng(6))
    x = I.as_model_input(model, photo).cpu()
    plain, idx, _ = I.reconstruct(model, photo, cls="Square 1")
    seen = []
    refined, idx2, _ = I.reconstruct(
        model, photo, cls="Square 1", refine_steps=30, progress=lambda f, d: seen.append(f)
    )
    db = lambda y: float(psnr(y[None], x)[0])  # noqa: E731
    assert idx == idx2 == 1 and db(refined) > db(plain) + 0.5
    assert seen and seen[-1] == 1.0
    assert all(p.grad is None for p in model.generator.parameters())  # only z was optimised
    # batched refinement treats each photo on its own: the same result alone or beside another photo
    xs = torch.cat([x, I.as_model_input(model, draw_shape(2, 40, np.random.default_rng(7))).cpu()])
    done = []
    both = I.reconstruct_batch(model, xs, torch.tensor([1, 2]), refine_steps=30, progress=done.append)
    assert done == [2]  # one progress call per batch, with its size
    alone = I.reconstruct_batch(model, xs[:1], torch.tensor([1]), refine_steps=30)
    assert torch.allclose(both[0], alone[0], atol=1e-4)
    assert torch.allclose(alone[0], refined.clamp(-1, 1), atol=1e-4)


def test_inpaint_keeps_known_pixels_exactly(model):
    photo = draw_shape(0, 57, np.random.default_rng(9)).resize((57, 41))
    mask = np.zeros((41, 57), bool)
    mask[10:30, 15:40] = True
    r = I.inpaint(model, photo, mask * 255, iterations=3, refine_steps=5)
    out, src = np.asarray(r["image"]), np.asarray(photo)
    assert out.shape == src.shape
    assert np.array_equal(out[~mask], src[~mask])
    assert (out[mask] != src[mask]).any()
    assert r["model_image"].size == (32, 32) and r["class"] in range(4)


def test_inpainting_starts_from_a_smooth_fill_of_the_border(tiny_model, monkeypatch):
    """The loop's first input keeps the known pixels and bridges the hole smoothly from its border (a red left
    side and a blue right side meet in a ramp; a linear ramp is restored), instead of one flat mean colour;
    E is given exactly that."""
    x = torch.full((1, 3, 32, 32), -1.0)
    x[:, 0, :, :16] = 1.0  # red left half
    x[:, 2, :, 16:] = 1.0  # blue right half
    m = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    m[..., 8:24, 8:24] = True
    start = I.fill_smooth(x, m)
    assert torch.equal(start[~m.expand_as(x)], x[~m.expand_as(x)])
    red_across = start[0, 0, 16, 8:24]
    assert red_across[0] > 0.5 and red_across[-1] < -0.5  # red near the red border, not near the blue one
    assert (red_across[1:] <= red_across[:-1] + 1e-6).all()  # a monotone ramp between them
    assert torch.equal(I.fill_smooth(x, torch.ones_like(m)), torch.zeros_like(x))  # nothing known: grey
    ramp = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32)  # a smooth photo: the start restores it (harmonic)
    assert (I.fill_smooth(ramp, m) - ramp).abs().max() < 1e-2
    seen = []
    forward = tiny_model.encoder.forward
    monkeypatch.setattr(tiny_model.encoder, "forward", lambda inp, c: (seen.append(inp.clone()), forward(inp, c))[1])
    I.inpaint_tensor(tiny_model, x, m, 1, iterations=2)
    assert len(seen) == 2 and torch.allclose(seen[0], start)
    assert not torch.allclose(seen[1], start)  # later rounds see the generated fill
    # a start computed by the caller (blend.inpaint computes it once for C's guess too) gives the same result,
    # and its known pixels are taken from x whatever the start holds there
    gen = I.inpaint_tensor(tiny_model, x, m, 1, iterations=2)
    calls = []
    monkeypatch.setattr(I, "fill_smooth", lambda *a: calls.append(1) or start)
    assert torch.equal(I.inpaint_tensor(tiny_model, x, m, 1, iterations=2, start=start.clone()), gen) and not calls
    seen.clear()
    I.inpaint_tensor(tiny_model, x, m, 1, iterations=1, start=torch.where(m, start, torch.zeros_like(x)))
    assert torch.allclose(seen[0], start)


def test_inpaint_empty_and_full_masks(model):
    photo = draw_shape(3, 32, np.random.default_rng(1))
    same = I.inpaint(model, photo, np.zeros((32, 32)))
    assert np.array_equal(np.asarray(same["image"]), np.asarray(photo))
    full = I.inpaint(model, photo, np.ones((32, 32)), cls=3)
    assert full["class"] == 3 and np.asarray(full["image"]).std() > 0
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent mask of another size
    rgba.paste((255, 255, 255, 255), (0, 0, 32, 64))
    half = np.asarray(I.inpaint(model, photo, rgba)["image"])
    assert np.array_equal(half[:, 16:], np.asarray(photo)[:, 16:])


def test_superresolution_output_matches_its_input(model):
    big = I.sample(model, 1, [4])[0]
    small = to_pil(big).resize((8, 8), Image.BOX)
    r = I.superresolve(model, small, steps=60)
    assert r["image"].size == (32, 32)
    assert r["psnr"] > 22, r["psnr"]
    with pytest.raises(ValueError, match="already"):
        I.superresolve(model, to_pil(big))


def test_augment_writes_promised_files(model, tmp_path):
    out = I.augment(model, tmp_path / "aug", per_class=2, first_seed=100)
    rows = list(csv.DictReader(open(out / "seeds.csv")))
    assert len(rows) == 8
    first = rows[0]
    assert (out / first["path"]).is_file()
    img = np.asarray(Image.open(out / first["path"]))
    expected = np.asarray(to_pil(I.sample(model, int(first["class_index"]), [int(first["seed"])])[0]))
    assert np.array_equal(img, expected)


def test_inference_cli_commands(trained_export, shapes_dir, tmp_path, capsys):
    import shutil

    from cvaegan.cli import main

    w = str(trained_export)
    photo = tmp_path / "p.png"
    draw_shape(1, 40, np.random.default_rng(2)).save(photo)
    mask = tmp_path / "m.png"
    m = Image.new("L", (40, 40), 0)
    m.paste(255, (10, 10, 30, 30))
    m.save(mask)
    small = tmp_path / "s.png"
    Image.open(photo).resize((8, 8)).save(small)
    assert (
        main(["swap", "--weights", w, "--seed", "3", "--classes", "0,1,Cross 3", "--out", str(tmp_path / "swap.png")])
        == 0
    )
    assert main(["swap", "--weights", w, "--image", str(photo), "--out", str(tmp_path / "swap2.png")]) == 0
    assert (
        main(
            [
                "interpolate",
                "--weights",
                w,
                "--class-a",
                "0",
                "--seed-a",
                "1",
                "--image-b",
                str(photo),
                "--frames",
                "4",
                "--out",
                str(tmp_path / "i.gif"),
            ]
        )
        == 0
    )
    assert main(["reconstruct", "--weights", w, "--image", str(photo), "--out", str(tmp_path / "r.png")]) == 0
    rec = ["reconstruct", "--weights", w, "--image", str(photo), "--out", str(tmp_path / "r2.png")]
    capsys.readouterr()
    assert main(rec) == 0
    assert main([*rec, "--refine-steps", "20"]) == 0
    plain_db, refined_db = (float(line.rsplit(" ", 2)[1]) for line in capsys.readouterr().out.splitlines()[-2:])
    assert refined_db > plain_db
    assert main([*rec, "--refine-steps", "-1"]) != 0
    assert (
        main(["inpaint", "--weights", w, "--image", str(photo), "--mask", str(mask), "--out", str(tmp_path / "f.png")])
        == 0
    )
    assert (
        main(["superres", "--weights", w, "--image", str(small), "--steps", "10", "--out", str(tmp_path / "sr.png")])
        == 0
    )
    assert main(["augment", "--weights", w, "--per-class", "1", "--out", str(tmp_path / "aug")]) == 0
    out = np.asarray(Image.open(tmp_path / "f.png"))
    keep = np.asarray(m) == 0
    assert np.array_equal(out[keep], np.asarray(Image.open(photo).convert("RGB"))[keep])
    wcopy = tmp_path / "w"
    shutil.copytree(w, wcopy)
    assert main(["directions", "--weights", str(wcopy), "--data", str(shapes_dir), "--components", "2"]) == 0
    assert CVAEGAN.from_pretrained(str(wcopy)).config.directions == ["attr_x", "pc1", "pc2"]
    # attr_* directions fitted on generated samples that an attribute judge scores
    from cvaegan.judge import train_judge

    data = load_images(shapes_dir, 32, progress=False)
    train_judge(data, tmp_path / "aj", epochs=1, batch_size=16, widths=[8, 16], progress=False, attributes=True)
    before = CVAEGAN.from_pretrained(str(wcopy)).directions[0]
    capsys.readouterr()
    (wcopy / "README.md").write_text("# card\n\nkept text\n\n## Latent directions (the app's sliders)\n\nold table\n")
    assert (
        main(
            [
                "directions",
                "--weights",
                str(wcopy),
                "--data",
                str(shapes_dir),
                "--components",
                "2",
                "--direction-judge",
                str(tmp_path / "aj"),
                "--judge-samples",
                "64",
                "--decorrelate",
                "--attribute-judge",
                str(tmp_path / "aj"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "attr_x: fitted on generated samples, judged (n=64" in printed and "attr_x: re-measured" in printed
    card = (wcopy / "README.md").read_text()  # the card's directions section is replaced, the rest kept
    assert card.startswith("# card\n\nkept text\n") and "old table" not in card and "NOT independent" in card
    assert card.count("## Latent directions") == 1 and (wcopy / "directions.jpg").is_file()
    assert not (wcopy / "directions.png").exists() and "![directions](directions.jpg)" in card
    assert json.loads((wcopy / "figures.json").read_text())["direction_fits"]["attr_x"]["decorrelated"] is True
    after = CVAEGAN.from_pretrained(str(wcopy))
    assert after.config.directions == ["attr_x", "pc1", "pc2"] and not torch.allclose(after.directions[0], before)
    train_judge(data, tmp_path / "cj", epochs=1, batch_size=16, widths=[8, 16], progress=False)
    assert (
        main(
            [
                "directions",
                "--weights",
                str(wcopy),
                "--data",
                str(shapes_dir),
                "--direction-judge",
                str(tmp_path / "cj"),
            ]
        )
        == 1
    )
    assert "is a class judge" in capsys.readouterr().err


class _ProbeGenerator(torch.nn.Module):
    """A generator with known answers: brightness = 0.05 z.u, left-minus-right = 0.05 z.v (u, v orthonormal)."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, resolution: int):
        super().__init__()
        self.register_buffer("u", u)
        self.register_buffer("v", v)
        self.r = resolution
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the model finds its device from G's parameters

    def forward(self, z, c):
        b, d = 0.05 * (z @ self.u), 0.05 * (z @ self.v)
        x = b[:, None, None, None].expand(-1, 3, self.r, self.r).clone()
        x[..., : self.r // 2] += d[:, None, None, None] / 2
        x[..., self.r // 2 :] -= d[:, None, None, None] / 2
        return x


class _ProbeJudge(torch.nn.Module):
    """An 'attribute judge' that measures those two attributes exactly (real photos' SDs 0.5 and 0.2)."""

    def __init__(self):
        super().__init__()
        from cvaegan.judge import JudgeConfig

        self.config = JudgeConfig(targets=["attr_bright", "attr_lr"], target_mean=[0.0, 0.0], target_std=[0.5, 0.2])
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        h = x.shape[-1] // 2
        out = torch.stack([x.mean((1, 2, 3)), x[..., :h].mean((1, 2, 3)) - x[..., h:].mean((1, 2, 3))], 1)
        out = out / torch.tensor(self.config.target_std)  # a judge's outputs are standardised
        return out, out


def test_directions_fitted_on_judged_samples_follow_the_generator(tiny_model, shapes_dir):
    """With an attribute judge, attr_* directions come from how G responds to z (known here), and a
    slider unit moves the judged attribute by one unit; the encoder's codes play no part in them."""

    m = tiny_model
    q, _ = torch.linalg.qr(torch.randn(m.config.z_dim, 2, generator=torch.Generator().manual_seed(0)))
    u, v = q[:, 0], q[:, 1]
    m.generator = _ProbeGenerator(u, v, m.config.resolution)
    data = load_images(shapes_dir, 32, progress=False)
    judge = _ProbeJudge()
    fits = compute_directions(m, data.images, data.labels, k=2, judge=judge, judge_samples=256)
    assert m.config.directions == ["attr_bright", "attr_lr", "pc1", "pc2"]
    assert m.config.direction_units == ["std"] * 4  # attr_*: the real photos' SD, which the judge keeps
    assert abs(float(m.directions[0] @ u)) > 0.999 and abs(float(m.directions[1] @ v)) > 0.999
    assert float(m.directions[0] @ u) > 0  # moving up the slider raises the attribute
    assert m.direction_scales[0].item() == pytest.approx(10.0, rel=0.01)  # 1 SD (0.5) of brightness = 10 along u
    assert fits["attr_bright"]["r2"] > 0.999 and fits["attr_bright"]["source"] == "generated samples, judged"
    checks = check_directions(
        m, {"attr_bright": 0.2, "attr_lr": 0.5, "pc1": 1.0, "pc2": 1.0}, classes=4, seeds=4, attribute_judge=judge
    )
    assert checks["attr_bright"]["per_unit"] == pytest.approx(1.0, abs=0.01)
    assert checks["attr_lr"]["per_unit"] == pytest.approx(1.0, abs=0.01)
    assert abs(checks["attr_bright"]["change_sd"]["attr_lr"]) < 0.01  # no side effect on the other
    with pytest.raises(ValueError, match="at least 32 samples"):
        compute_directions(m, data.images, data.labels, k=2, judge=judge, judge_samples=10)


@pytest.mark.parametrize("decorrelate", [False, True])
def test_decorrelated_directions_leave_the_other_attribute_alone(tiny_model, shapes_dir, decorrelate):
    """G's left/right attribute also follows brightness's latent axis (0.6 u + 0.8 v): the plain brightness
    direction drags it along, the decorrelated one does not; both move brightness by one SD per unit."""

    m = tiny_model
    q, _ = torch.linalg.qr(torch.randn(m.config.z_dim, 2, generator=torch.Generator().manual_seed(1)))
    m.generator = _ProbeGenerator(q[:, 0], 0.6 * q[:, 0] + 0.8 * q[:, 1], m.config.resolution)
    data = load_images(shapes_dir, 32, progress=False)
    judge = _ProbeJudge()
    fits = compute_directions(m, data.images, data.labels, k=1, judge=judge, judge_samples=256, decorrelate=decorrelate)
    assert fits["attr_bright"]["decorrelated"] is decorrelate
    checks = check_directions(
        m, {"attr_bright": 0.5, "attr_lr": 0.5, "pc1": 1.0}, classes=4, seeds=4, attribute_judge=judge
    )
    assert checks["attr_bright"]["per_unit"] == pytest.approx(1.0, abs=0.02)
    assert checks["attr_lr"]["per_unit"] == pytest.approx(1.0, abs=0.02)
    side = abs(checks["attr_bright"]["change_sd"]["attr_lr"])
    if decorrelate:
        assert side < 0.02
    else:  # 1 SD of brightness = 10 along u, which moves lr by 0.05 * 0.6 * 10 = 0.3 = 1.5 of its SDs
        assert side == pytest.approx(1.5, rel=0.05)
