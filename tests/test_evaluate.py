"""The judge and the evaluation metrics: known answers for each metric, then judge + evaluate end to end."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import cli, evaluate as E
from cvaegan.card import OLD_JUDGE_LINE
from cvaegan.data import load_images
from cvaegan.hub import WeightsError
from cvaegan.judge import Judge, JudgeConfig, load_judge, predict, save_judge, top1, train_judge


def _random_judge(res=32, k=4):
    torch.manual_seed(0)
    return Judge(JudgeConfig(resolution=res, num_classes=k)).eval()


def _images(n, res=32, seed=0):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_kid_zero_for_identical_sets_and_positive_otherwise():
    j = _random_judge()
    x = predict(j, _images(200))[1]
    same = E.fid_kid(x, x)
    assert abs(same["fid"]) < 1e-6 and abs(same["kid_mean"]) < 5e-3
    other = E.fid_kid(x, predict(j, _images(200, seed=1) * 0.3)[1])
    assert other["fid"] > 0.1 and other["kid_mean"] > same["kid_mean"]


def test_fid_on_features_known_answer():
    """The Frechet distance of two feature sets, against the formula written out with numpy:
    |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), sample covariances."""
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(300, 6))).float()
    b = torch.from_numpy(rng.normal(size=(200, 6)) * 1.5 + 0.7).float()
    a64, b64 = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(a64.T), np.cov(b64.T)
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    want = ((a64.mean(0) - b64.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace
    got = E.fid_kid(a, b)
    assert got["fid"] == pytest.approx(want, rel=1e-4) and want > 1
    assert got["kid_mean"] > 0 and got["kid_subset_size"] == 200
    assert E.fid_kid(a, b, kid=False) == {"fid": pytest.approx(got["fid"], rel=1e-9)}  # FID alone: the same FID
    for bad in (b[:, :5], b[:1], b[None]):
        with pytest.raises(E.EvaluationError, match="feature sets"):
            E.fid_kid(a, bad)


class _Oracle(torch.nn.Module):
    """A perfect classifier for images that carry their class in the red channel of pixel (0, 0)."""

    def __init__(self, k):
        super().__init__()
        self.config = JudgeConfig(resolution=32, num_classes=k, widths=[4])
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = ((x[:, 0, 0, 0] + 1) / 2 * (self.config.num_classes - 1)).round().long()
        logits = torch.nn.functional.one_hot(cls, self.config.num_classes).float() * 10
        return logits, logits


def test_perfect_classifier_scores_top1_one_and_shuffled_labels_do_not():
    k = 5
    labels = torch.arange(k).repeat(8)
    x = torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8)
    x[:, 0, 0, 0] = (labels.float() / (k - 1) * 255).round().to(torch.uint8)
    oracle = _Oracle(k)
    assert top1(oracle, x, labels) == 1.0
    assert top1(oracle, x, (labels + 1) % k) == 0.0


def test_inception_score_bounds():
    assert E.inception_score(torch.zeros(50, 4))["mean"] == pytest.approx(1.0)
    confident = torch.eye(4).repeat(25, 1) * 50  # sure and balanced over 4 classes -> IS = 4
    assert E.inception_score(confident, splits=1)["mean"] == pytest.approx(4.0, rel=1e-3)


def test_ms_ssim_of_identical_images_is_one_and_diversity_zero():
    x = _images(1, res=64).repeat(4, 1, 1, 1)
    assert E.pairwise_ms_ssim(x) == pytest.approx(1.0, abs=1e-5)
    assert E.intra_class_diversity(x, torch.zeros(4, dtype=torch.long)) == pytest.approx(0.0, abs=1e-5)
    noise = _images(4, res=64, seed=3)
    assert E.pairwise_ms_ssim(noise) < 0.3
    assert E.pairwise_ms_ssim(_images(1)) != E.pairwise_ms_ssim(_images(1))  # nan for a single image


def test_feature_spread_is_zero_for_alike_and_one_for_orthogonal_features():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # class 2 has one image: left out of the mean
    alike = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 2.0, 0]] * 2 + [[0, 0, 1.0]])  # scale does not matter
    assert E.feature_spread(alike, labels) == pytest.approx(0.0, abs=1e-9)
    apart = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 3.0], [1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1.0]])
    assert E.feature_spread(apart, labels) == pytest.approx(1.0)
    half = torch.tensor([[1.0, 0, 0]] * 3 + [[1.0, 0, 0], [0, 1.0, 0]] + [[0, 0, 1.0]])  # class 0: 0, class 1: 1
    assert E.feature_spread(half, labels) == pytest.approx(0.5)
    assert np.isnan(E.feature_spread(alike[:1], labels[:1]))


def test_psnr_ssim_known_values_and_mask_restriction():
    t = torch.zeros(2, 3, 32, 32)
    p, s = E.psnr_ssim(t + 0.2, t)  # 0.1 in [0, 1] units -> 20 dB
    assert torch.allclose(p, torch.full((2,), 20.0), atol=1e-4)
    assert torch.all(s < 1)
    m = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    m[..., :8, :8] = True
    wrong_outside = torch.where(m, t, t + 0.5)
    p, _ = E.psnr_ssim(wrong_outside, t, m)
    assert torch.all(p > 90)  # the error lies outside the mask only


def test_prdc_of_identical_features_is_perfect():
    f = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    out = E.prdc_metrics(f, f)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0


def test_prdc_on_small_sets():
    """k is clamped to n - 2 (prdc's radius skips the point itself), and fewer than 3 images is a clear error."""
    g = torch.Generator().manual_seed(0)
    out = E.prdc_metrics(torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g))
    assert out["nearest_k"] == 4 and 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    with pytest.raises(E.InputError, match="at least 3"):
        E.prdc_metrics(torch.randn(2, 4, generator=g), torch.randn(10, 4, generator=g))


def test_masks_and_baselines():
    box = E.centre_box_mask(64)
    assert box.float().mean().item() == pytest.approx(0.25)
    a, b = E.brush_mask(64, 1), E.brush_mask(64, 1)
    assert torch.equal(a, b) and not torch.equal(a, E.brush_mask(64, 2))
    assert 0.03 < a.float().mean().item() < 0.6
    x = _images(1, res=64)
    flat = torch.full((1, 3, 64, 64), 0.4)
    for method in ("telea", "ns"):
        out = E.opencv_inpaint(x, a, method)
        assert torch.equal(out[~a.expand_as(out)], x[~a.expand_as(x)])  # known pixels untouched
        p, _ = E.psnr_ssim(E.opencv_inpaint(flat, a, method), flat, a)
        assert p.item() > 40  # a flat image is filled with its colour
    filled = E.mean_fill(flat, a)
    assert torch.allclose(filled, flat)


@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("layout", ["faces", "centre"])
def test_box25_hides_exactly_a_quarter_inside_the_image(res, layout):
    top, left, side = E.box25(res, layout)
    assert 0 <= top and top + side <= res and 0 <= left and left + side <= res
    m = E.box25_mask(res, layout)
    assert m.shape == (1, 1, res, res) and int(m.sum()) == res * res // 4  # exactly 25%, nothing clipped
    assert torch.equal(m, E.make_mask("box25", res, 7, layout))  # the same box for every image
    assert torch.equal(E.box25_mask(res, "centre"), E.centre_box_mask(res))


def test_face_box_covers_the_eyes_and_the_nose():
    # where the faces pack puts them: CelebA's aligned frame (178 x 218, rows 20..198 cropped to the square),
    # eye centres (69.0, 112.75) and (107.9, 112.75), mouth corners at y 152.6; nose tip 0.55 of the way down
    def at64(x, y):
        return x / 178 * 64, (y - 20) / 178 * 64

    eyes = [at64(69.0, 112.75), at64(107.9, 112.75)]
    mouth_y = at64(0, 152.6)[1]
    nose = (32.0, eyes[0][1] + 0.55 * (mouth_y - eyes[0][1]))
    m = E.box25_mask(64, "faces")[0, 0]
    iod = eyes[1][0] - eyes[0][0]
    for ex, ey in eyes:  # each eye with its lids and brow: +-0.3 iod across, from 0.4 iod above to 0.2 below
        assert m[
            round(ey - 0.4 * iod) : round(ey + 0.2 * iod) + 1, round(ex - 0.3 * iod) : round(ex + 0.3 * iod) + 1
        ].all()
    assert m[round(nose[1]) - 1 : round(nose[1]) + 2, 28:36].all()  # nose tip and nostrils
    assert not E.box25_mask(64, "faces")[0, 0, :16].any()  # hair and forehead stay
    assert E.box_layout(["celeba_07201", "lfw_George_W_Bush"]) == "faces"
    assert E.box_layout(["001.Black_footed_Albatross", "celeba_07201"]) == "centre"


def test_thin_strokes_are_thin_and_seeded():
    import torch.nn.functional as F

    fractions = []
    for i in range(16):
        m = E.make_mask("brush_thin", 64, i)
        assert torch.equal(m, E.make_mask("brush_thin", 64, i))
        core = -F.max_pool2d(-m.float(), 5, 1, 2)  # pixels whose whole 5x5 neighbourhood is masked
        assert core.sum() <= 0.1 * m.sum()  # strokes 2-3 px wide have (almost) no such pixels
        fractions.append(m.float().mean().item())
    assert 0.02 < np.mean(fractions) < 0.15 < np.mean([E.make_mask("brush", 64, i).float().mean() for i in range(16)])


class _FolderJudge(torch.nn.Module):
    """A judge whose classes are `folders` (another order than the data's, and extra ones). It reads the
    photo's data class from the red channel of pixel (0, 0), which no 25% face box touches, and names it by
    its own index for that folder."""

    def __init__(self, folders, data_folders):
        super().__init__()
        self.config = JudgeConfig(resolution=32, num_classes=len(folders), class_folders=folders, widths=[4])
        self.to_mine = torch.tensor([folders.index(f) for f in data_folders])
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        data_cls = ((x[:, 0, 0, 0] + 1) / 2 * 255 / 60).round().long().clamp(0, len(self.to_mine) - 1)
        logits = torch.nn.functional.one_hot(self.to_mine[data_cls], self.config.num_classes).float() * 10
        return logits, logits


def _val_set(n=4, res=32, folders=("Circle 0", "Square 1", "Triangle 2", "Cross 3")):
    from cvaegan.data import LabelledImages

    folders = list(folders)
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(n, 3, res, res, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n) % len(folders)
    images[:, 0, 0, 0] = (labels * 60).to(torch.uint8)  # the class, where _FolderJudge reads it
    return LabelledImages(images, labels, folders, folders, [f"{folders[c]}/{i}.png" for i, c in enumerate(labels)])


def test_evaluation_inpaints_with_the_apps_function(tiny_model, monkeypatch):
    from cvaegan import blend, inference as I, service as S

    calls = []
    real = blend.inpaint

    def spy(model, photo, mask, cls=None, iterations=blend.DEFAULT_ITERATIONS, *args, **kw):
        calls.append((cls, iterations, np.asarray(photo).shape, mask.shape))
        return real(model, photo, mask, cls, iterations, *args, **kw)

    monkeypatch.setattr(blend, "inpaint", spy)
    val = _val_set()
    rep = E.inpainting_scores(tiny_model, val, 4, kinds=("box25",))
    assert rep["iterations"] == S.DEFAULT_ITERATIONS == blend.DEFAULT_ITERATIONS  # the app's default
    assert len(calls) == 8  # every photo twice: with its true class and with C's guess (the app's "auto")
    assert sorted(c[0] for c in calls[::2]) == [0, 1, 2, 3] and all(c[0] is None for c in calls[1::2])
    assert all(c[1] == S.DEFAULT_ITERATIONS and c[2] == (32, 32, 3) and c[3] == (32, 32) for c in calls)
    # the app and the CLI run the very same function
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:20, 8:20, 3] = 255
    photo = val.images[0].permute(1, 2, 0).numpy()
    S.inpaint(tiny_model, {"background": photo, "layers": [layer]}, S.AUTO, S.DEFAULT_ITERATIONS, 0)
    assert len(calls) == 9 and calls[-1][0] is None
    I.inpaint(tiny_model, photo, layer[..., 3] > 0, "Square 1")
    assert len(calls) == 10 and calls[-1][0] == 1
    # what the evaluation scores is what the user gets, pixel for pixel
    m = E.box25_mask(32, "centre")
    mine, cls = E.user_inpaint(tiny_model, val.images[1], m, 1, 4)
    theirs = real(tiny_model, val.images[1].permute(1, 2, 0).numpy(), m[0, 0].numpy(), 1, 4)["image"]
    assert cls == 1 and torch.equal(mine, E.uint8_to_float(E.pil_to_uint8(theirs))[None])


def test_inpainting_judges_every_method_by_folder(tiny_model):
    val = _val_set(n=6)
    folders = ["extra_a", "Cross 3", "Triangle 2", "extra_b", "Square 1", "Circle 0"]  # other order, more classes
    judge = _FolderJudge(folders, val.class_folders)
    rep = E.inpainting_scores(tiny_model, val, 6, iterations=1, judge=judge, layout="faces")
    assert rep["images"] == 6 and rep["iterations"] == 1 and rep["box25_layout"] == "faces"
    assert rep["judge_top1_original"] == 1.0  # the ceiling
    assert set(E.MASK_KINDS + E.LEGACY_KINDS) <= set(rep)
    box = rep["box25"]
    assert box["hole_fraction"] == 0.25 and box["box"] == {"top": 10, "left": 8, "side": 16}
    for method in E.INPAINT_METHODS:  # pixel (0, 0) is never in the face box: every method keeps the class
        assert box[method]["judge_top1"] == 1.0, method
    assert rep["centre_box"]["hole_fraction"] == 0.25 and "box" in rep["centre_box"]
    for kind in E.MASK_KINDS + E.LEGACY_KINDS:
        e = rep[kind]
        assert 0 < e["hole_fraction"] < 1
        for method in E.INPAINT_METHODS:
            assert e[method]["psnr_db"] > 0 and 0 <= e[method]["judge_top1"] <= 1
        assert 0 <= e["cvaegan_predicted_class"]["class_guess_top1"] <= 1
        for ours in ("cvaegan", "cvaegan_predicted_class"):  # paired with Telea photo by photo
            v = e[ours]["judge_vs_telea"]
            assert v["ours_only"] - v["telea_only"] == round((e[ours]["judge_top1"] - e["telea"]["judge_top1"]) * 6)
            assert v["ours_only"] + v["telea_only"] <= 6
    assert rep["brush_thin"]["hole_fraction"] < rep["brush"]["hole_fraction"]
    # a judge that lacks one of the data's classes is refused, not silently mis-scored
    with pytest.raises(E.EvaluationError, match="does not know"):
        E.inpainting_scores(tiny_model, val, 2, 1, judge=_FolderJudge(folders[:-1] + ["x"], folders[:-1] + ["x"]))
    # without a judge: the pixel figures only
    plain = E.inpainting_scores(tiny_model, val, 2, 1, kinds=("brush_thin",))
    assert "judge_top1_original" not in plain and "judge_top1" not in plain["brush_thin"]["telea"]
    assert "judge_vs_telea" not in plain["brush_thin"]["cvaegan"]
    # the weights' detail feather unless one is given, and the report says which (the card repeats it)
    assert plain["feather_px"] == 0.0
    feathered = E.inpainting_scores(tiny_model, val, 2, 1, kinds=("brush_thin",), feather=3.0)
    assert feathered["feather_px"] == 3.0 and feathered["brush_thin"]["telea"] == plain["brush_thin"]["telea"]
    assert feathered["brush_thin"]["cvaegan"] != plain["brush_thin"]["cvaegan"]
    # photos of a class the model does not have (left out of training) are skipped and counted
    more = _val_set(n=5, folders=["Circle 0", "Square 1", "Triangle 2", "Cross 3", "Left out 4"])
    rep = E.inpainting_scores(tiny_model, more, 10, 1, kinds=("box25",))
    assert rep["images"] == 4 and rep["skipped_photos_of_classes_the_model_lacks"] == 1


def test_inpainting_table_states_the_verdict():
    def m(p, t):
        return {"psnr_db": p, "ssim": 0.5, "judge_top1": t}

    inp = {"images": 16, "iterations": 4, "box25_layout": "faces", "judge_top1_original": 0.5}
    inp["box25"] = {
        "hole_fraction": 0.25,
        "box": {"top": 20, "left": 16, "side": 32},
        "cvaegan": m(15.0, 0.3),
        "cvaegan_predicted_class": m(14.0, 0.1),
        "telea": m(12.5, 0.2),
        "navier_stokes": m(12.3, 0.2),
        "mean_fill": m(11.9, 0.05),
    }
    inp["brush_thin"] = {
        "hole_fraction": 0.07,
        "cvaegan": m(16.0, 0.45),
        "cvaegan_predicted_class": m(16.0, 0.45),
        "telea": m(20.0, 0.45),
        "navier_stokes": m(20.0, 0.45),
        "mean_fill": m(13.0, 0.4),
    }
    inp["brush"] = {
        "hole_fraction": 0.18,
        "cvaegan": {**m(19.6, 0.766), "judge_vs_telea": {"ours_only": 2, "telea_only": 3, "z": -0.447}},
        "cvaegan_predicted_class": {**m(19.7, 0.5), "judge_vs_telea": {"ours_only": 1, "telea_only": 19, "z": -4.025}},
        "telea": m(19.1, 0.781),
        "navier_stokes": m(19.0, 0.78),
        "mean_fill": m(14.0, 0.7),
    }
    lines = E.inpainting_table(inp).strip().splitlines()
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "25% box (faces: rows 20-51, columns 16-47)" in lines[2] and "25.0%" in lines[2]
    assert "true class: target met" in lines[2]
    assert "C's guess: target missed (judge top-1 10.0% < 20.0%)" in lines[2]
    assert "50.0% / 5.0%" in lines[2]  # ceiling / floor
    assert "Telea ahead (PSNR 16.00 < 20.00 dB)" in lines[3]  # the strokes: Telea's lead is stated
    # with paired counts the verdict says how many photos the gap is and whether it is more than noise
    assert (
        "true class: Telea ahead (judge top-1 76.6% < 78.1%: Telea alone kept the class on 3 photos, ours alone "
        "on 2 photos, McNemar z -0.45, within noise)" in lines[4]
    )
    assert "ours alone on 1 photo, McNemar z -4.03)" in lines[4]  # a clear loss is not called noise


def test_mcnemar_counts_the_discordant_pairs():
    assert E.mcnemar("1100", "1010") == (1, 1, 0.0)
    assert E.mcnemar("1111", "0000") == (4, 0, 2.0)
    assert E.mcnemar("0", "0") == (0, 0, 0.0)  # no item differs: no evidence either way
    with pytest.raises(E.InputError, match="different numbers of photos"):
        E.mcnemar("10", "1", "photos")


@pytest.fixture(scope="module")
def shapes_judge(shapes_dir, tmp_path_factory):
    data = load_images(shapes_dir, 32, progress=False)
    out = tmp_path_factory.mktemp("judge")
    cfg = train_judge(data, out, epochs=12, batch_size=16, widths=[16, 32, 64], progress=False)
    return out, cfg


def test_judge_learns_shapes_and_round_trips(shapes_judge, shapes_dir):
    out, cfg = shapes_judge
    assert cfg.training["val_top1"] >= 0.75  # 4 colour-coded classes; chance 0.25
    j = load_judge(out)
    data = load_images(shapes_dir, 32, progress=False)
    assert top1(j, data.images, data.labels) >= 0.75
    again = load_judge(out)
    x = _images(3)
    assert torch.equal(j(x)[0], again(x)[0])


def test_judge_rejects_corrupt_and_foreign_files(shapes_judge, tmp_path):
    out, _ = shapes_judge
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((out / "config.json").read_text())
    (bad / "judge.safetensors").write_bytes((out / "judge.safetensors").read_bytes()[:100])
    with pytest.raises(WeightsError, match="judge.safetensors"):
        load_judge(bad)
    cfg = json.loads((out / "config.json").read_text())
    cfg["kind"] = "something-else"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="not a judge"):
        load_judge(bad)
    with pytest.raises(WeightsError, match="cvaegan judge"):
        load_judge(tmp_path / "nowhere")


def test_judge_and_evaluate_commands_end_to_end(trained_export, shapes_dir, tmp_path, capsys):
    judge_dir = tmp_path / "judge"
    assert (
        cli.main(
            [
                "judge",
                "--data",
                str(shapes_dir),
                "--out",
                str(judge_dir),
                "--resolution",
                "32",
                "--epochs",
                "3",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert "judge top-1" in capsys.readouterr().out
    report_path = tmp_path / "report.json"
    weights = tmp_path / "weights"
    shutil.copytree(trained_export, weights)
    (weights / "README.md").write_text("# card\n\n" + OLD_JUDGE_LINE + "\n\nmore text\n")
    assert (
        cli.main(
            [
                "evaluate",
                "--weights",
                str(weights),
                "--judge",
                str(judge_dir),
                "--data",
                str(shapes_dir),
                "--out",
                str(report_path),
                "--samples-per-class",
                "3",
                "--inpaint-images",
                "3",
                "--inpaint-iterations",
                "2",
                "--box",
                "faces",
                "--device",
                "cpu",
                "--card",
                "--fid-baseline",
                "30",
                "--recon-refine-steps",
                "10",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "with 10 steps of z refinement" in printed
    assert "| 25% box (faces: rows 10-25, columns 8-23) |" in printed and "target" in printed
    card = (weights / "README.md").read_text()
    assert "ours vs OpenCV Telea" in card and "| 25% box (faces" in card
    assert "Independent judge" in card and OLD_JUDGE_LINE not in card and card.endswith("more text\n")
    assert card.index("<!-- judge:end -->") < card.index("## Targets of this release") < card.index("more text")
    assert "baseline weights' 30.0 (<= 15.00)" in card
    assert json.loads((weights / "evaluation.json").read_text()) == json.loads(report_path.read_text())
    r = json.loads(report_path.read_text())
    assert r["format"] == E.REPORT_FORMAT
    assert r["generated_images"] == 12 and r["classes"] == 4
    d = r["discriminability"]
    assert 0 <= d["judge_top1_generated"] <= 1 and 0 <= d["judge_top1_real_val"] <= 1
    assert set(d["judge_top1_generated_per_class"]) == {"Circle 0", "Square 1", "Triangle 2", "Cross 3"}
    assert r["fid_judge"] >= 0 and "not Inception" in r["feature_space"]
    assert set(r["prdc_judge"]) >= {"precision", "recall", "density", "coverage"}
    assert r["inception_score_judge"]["generated"]["mean"] >= 1
    assert 0 <= r["intra_class_diversity"]["generated"] <= 1
    assert r["reconstruction"]["psnr_db"] > 10
    # refining each photo's code on its own pixels can only bring the reconstruction closer
    refined = r["reconstruction"]["refined"]
    assert refined["steps"] == 10 and refined["psnr_db"] > r["reconstruction"]["psnr_db"]
    assert (
        f"after 10 steps of z refinement per photo (the app's Reconstruct slider; codes leave the prior) | {refined['psnr_db']:.2f} dB"
        in card
    )
    inp = r["inpainting"]
    assert inp["images"] == 3 and inp["iterations"] == 2 and inp["box25_layout"] == "faces"
    assert 0 <= inp["judge_top1_original"] <= 1
    for kind in ("box25", "brush_thin", "brush", "centre_box"):
        methods = inp[kind]
        assert set(methods) >= {"cvaegan", "cvaegan_predicted_class", "telea", "navier_stokes", "mean_fill"}
        assert all(methods[k]["psnr_db"] > 0 and 0 <= methods[k]["judge_top1"] <= 1 for k in E.INPAINT_METHODS)
    assert "| 25% box (faces" in E.inpainting_table(inp)
    # a judge of another data set is refused with a message that says what to do
    other = load_images(shapes_dir, 32, progress=False)
    other.class_folders = [f + "_x" for f in other.class_folders]
    with pytest.raises(E.EvaluationError, match="trained on other classes"):
        from cvaegan import CVAEGAN

        E.evaluate(CVAEGAN.from_pretrained(str(trained_export)), load_judge(judge_dir), other, 1, progress=False)


def test_judge_command_errors_are_one_line(shapes_dir, tmp_path, capsys):
    assert cli.main(["judge", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "j")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["judge", "--data", str(shapes_dir), "--out", str(tmp_path / "j"), "--epochs", "0"]) == 1
    assert "--epochs" in capsys.readouterr().err


def test_save_judge_is_strict(tmp_path):
    j = _random_judge()
    save_judge(j, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["widths"] = [8, 16, 32, 64]
    cfg["files"] = {}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="does not match"):
        load_judge(tmp_path)


def test_experiment_table_plot_and_readme_section(tmp_path):
    from cvaegan import experiments as X

    rows = {"real data": {"discriminability": 0.5, "inception_score": 3.0, "diversity": 0.6}}
    for i, v in enumerate(["cvae", "cgan", "fm-cgan", "cvae-gan"]):
        rows[v] = {"discriminability": 0.1 * i, "inception_score": 2.0 + i, "fid_judge": 40.0 - i, "diversity": 0.5}
    md = X.table1_markdown({"rows": rows, "paper": X.PAPER_TABLE1})
    lines = md.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("| CVAE-GAN | 30.00% |") and "97.78%" in lines[-1]
    X.bar_chart(
        [(X.LABELS[k], v["discriminability"], X.PAPER_TABLE1[k]["discriminability"]) for k, v in rows.items()],
        "t",
        tmp_path / "p.png",
    )
    assert Image.open(tmp_path / "p.png").size[0] == 640
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- table1:start -->\nold\n<!-- table1:end -->\nb\n")
    X.write_readme_section(readme, "table1", md)
    assert readme.read_text() == "a\n<!-- table1:start -->\n" + md + "<!-- table1:end -->\nb\n"
    with pytest.raises(ValueError, match="markers"):
        X.write_readme_section(readme, "nope", md)


def _grey_folder(root, per_class=32, seed=0):
    """Two classes of 32 px pictures whose attr_grey is the background level and attr_left the square's x."""
    rng = np.random.default_rng(seed)
    rows = ["path,class_folder,class_name,attr_grey,attr_left"]
    for c, folder in enumerate(("a", "b")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey, left = rng.uniform(0.1, 0.9), int(rng.integers(2, 20))
            arr = np.full((32, 32, 3), int(grey * 255), np.uint8)
            arr[10:20, left : left + 10] = (255, 0, 0) if c == 0 else (0, 0, 255)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
            rows.append(f"{folder}/{i}.png,{folder},{folder.upper()},{grey:.4f},{'' if i == 3 else left}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_attribute_judge_learns_attributes_and_round_trips(tmp_path):
    from cvaegan.images import uint8_to_float
    from cvaegan.judge import predict_attributes, r_squared

    data = load_images(_grey_folder(tmp_path / "grey"), 32, progress=False)
    assert torch.isnan(data.attributes["attr_left"]).sum() == 2  # the blank cells: unknown, not 0
    cfg = train_judge(
        data, tmp_path / "aj", epochs=30, batch_size=16, widths=[16, 32, 64], progress=False, attributes=True
    )
    assert cfg.targets == ["attr_grey", "attr_left"] and cfg.outputs == 2
    assert cfg.training["val_r2"]["attr_grey"] > 0.7, cfg.training  # learnable from pixels
    j = load_judge(tmp_path / "aj")
    pred = predict_attributes(j, uint8_to_float(data.images))
    assert r_squared(pred["attr_grey"], data.attributes["attr_grey"]) > 0.8
    assert abs(pred["attr_grey"].mean().item() - data.attributes["attr_grey"].mean().item()) < 0.1  # raw units
    with pytest.raises(ValueError, match="classifies"):
        predict_attributes(_random_judge(), _images(2))
    with pytest.raises(E.EvaluationError, match="attribute judge"):
        E.check_compatible(type("M", (), {"config": type("C", (), {"class_folders": data.class_folders})()})(), j, data)


def test_attribute_judge_needs_attribute_columns(shapes_dir, tmp_path, capsys):
    from conftest import make_shapes_folder

    bare = make_shapes_folder(tmp_path / "bare", names=False)
    rc = cli.main(
        [
            "judge",
            "--attributes",
            "--data",
            str(bare),
            "--out",
            str(tmp_path / "j"),
            "--resolution",
            "32",
            "--epochs",
            "1",
        ]
    )
    assert rc == 1 and "attr_*" in capsys.readouterr().err


def test_r_squared_known_values():
    from cvaegan.judge import r_squared

    t = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    assert r_squared(t, t) == pytest.approx(1.0)
    assert r_squared(torch.full((4,), 2.0), t) == pytest.approx(0.0)


def test_evaluate_weights_that_left_classes_out(tiny_model, monkeypatch):
    """Weights trained with --exclude-classes are measured on the classes they have; the judge's classes are
    matched by folder name, not by position."""
    from cvaegan import inference as I

    folders = ["Circle 0", "Square 1", "Triangle 2", "Cross 3", "Left out 4"]
    data = _val_set(n=80, folders=folders)
    judge = _FolderJudge(folders, folders)  # trained on the data's folders, as check_compatible asks
    judge.config.widths = [len(folders)]  # its features are its logits
    tiny_model.config.class_folders = ["Cross 3", "Triangle 2", "Square 1", "Circle 0"]  # the model's own order
    data_index = {f: i for i, f in enumerate(folders)}

    def fake_generate(model, z, c, batch_size=64):
        x = torch.zeros(len(c), 3, 32, 32)
        d = torch.tensor([data_index[model.config.class_folders[int(k)]] for k in c])
        x[:, 0, 0, 0] = (d * 60).float() / 255 * 2 - 1  # the sample's data class, where _FolderJudge reads it
        return x

    monkeypatch.setattr(I, "generate", fake_generate)
    rep = E.evaluate(tiny_model, judge, data, samples_per_class=3, inpaint_images=0, progress=False)
    assert rep["classes"] == 4 and rep["classes_left_out_of_training"] == ["Left out 4"]
    assert rep["discriminability"]["judge_top1_generated"] == 1.0  # every sample judged as its own class
    assert rep["val_images"] == 8  # two held-out photos for each class the weights have
    assert rep["reconstruction"]["psnr_db"] > 0
    assert (
        "refined"
        not in E.evaluate(
            tiny_model, judge, data, samples_per_class=3, inpaint_images=0, progress=False, recon_refine_steps=0
        )["reconstruction"]
    )


def test_evaluate_truncation_scales_the_samples_z(tiny_model, monkeypatch):
    """--truncation scales every sample's z (seeds unchanged), is recorded, and is refused outside [0, 2]."""
    from cvaegan import inference as I

    folders = ["Circle 0", "Square 1", "Triangle 2", "Cross 3"]
    data = _val_set(n=64, folders=folders)
    judge = _FolderJudge(folders, folders)
    judge.config.widths = [len(folders)]
    tiny_model.config.class_folders = folders
    calls, seen = [], {}
    real_generate = I.generate

    def spy(model, z, c, batch_size=64):
        calls.append(z.clone())
        return real_generate(model, z, c, batch_size=batch_size)

    monkeypatch.setattr(I, "generate", spy)
    reps = {}
    for t in (1.0, 0.5, 0.0):
        calls.clear()
        reps[t] = E.evaluate(tiny_model, judge, data, 2, inpaint_images=0, progress=False, truncation=t)
        seen[t] = torch.cat(calls)
        assert reps[t]["truncation"] == t
        if t != 1.0:
            assert torch.allclose(seen[t], t * seen[1.0])
    assert reps[0.0]["intra_class_diversity"]["generated"] == pytest.approx(0.0, abs=1e-4)  # z = 0: one picture
    assert reps[1.0]["intra_class_diversity"]["generated"] > reps[0.0]["intra_class_diversity"]["generated"]
    with pytest.raises(E.EvaluationError, match="between 0 and 2"):
        E.evaluate(tiny_model, judge, data, 2, inpaint_images=0, progress=False, truncation=3.0)


def test_evaluate_command_keeps_the_card_at_the_prior(tmp_path, capsys):
    base = ["evaluate", "--weights", str(tmp_path), "--judge", "j", "--data", "d", "--out", str(tmp_path / "r.json")]
    assert cli.main(base + ["--card", "--truncation", "0.7"]) == 1
    assert "z ~ N(0, I)" in capsys.readouterr().err
    assert cli.main(base + ["--truncation", "-1"]) == 1
    assert "between 0 and 2" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def _report(top1=0.2, real=0.5, fid=12.0, psnr=16.0, ours=(15.0, 0.4), telea=(14.0, 0.3)):
    box = {
        "cvaegan": {"psnr_db": ours[0], "judge_top1": ours[1]},
        "telea": {"psnr_db": telea[0], "judge_top1": telea[1]},
    }
    return {
        "discriminability": {"judge_top1_generated": top1, "judge_top1_real_val": real},
        "generated_images": 500,
        "fid_judge": fid,
        "reconstruction": {"psnr_db": psnr},
        "inpainting": {"box25": box, "box25_layout": "centre"},
    }


def _verdicts(section: str) -> list[str]:
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| target")]
    return [r.rsplit("|", 2)[1].strip() for r in rows]


def test_targets_section_verdicts_follow_the_figures():
    from cvaegan.card import targets_section

    # top-1 0.2 < 0.5 x 0.5; FID 12 <= 15; PSNR 16 < 18; box: ours ahead on both
    s = targets_section(_report(), fid_baseline=30.0)
    assert _verdicts(s) == ["**missed**", "met", "**missed**", "met"]
    assert "20.00% on 500 samples (0.400 x 50.0%)" in s and "(<= 15.00)" in s and "15.00 vs 14.00 dB" in s
    s = targets_section(_report(top1=0.3, fid=16.0, psnr=18.5, ours=(13.0, 0.6)), fid_baseline=30.0)
    assert _verdicts(s) == ["met", "**missed**", "met", "**missed** on PSNR, met on the judge"]
    s = targets_section(_report(ours=(13.0, 0.1)), fid_baseline=None)
    assert _verdicts(s)[1:] == ["no baseline given", "**missed**", "**missed** on both"]
    report = _report()
    report["reconstruction"]["refined"] = {"steps": 50, "psnr_db": 19.5}
    s = targets_section(report, fid_baseline=30.0)  # the target counts E -> G; the refined figure is quoted
    assert "| 16.00 dB (E -> G; 19.50 dB after 50 steps of z refinement) | **missed** |" in s


def test_targets_section_quotes_the_release_gate():
    from cvaegan.card import targets_section

    gate = {"candidate": {"judge_top1": 0.26, "fid": 11.5, "samples": 1000}}
    s = targets_section(_report(), gate, fid_baseline=30.0)
    assert "26.00% on the release gate's 1,000 samples (0.52 x)" in s and "11.50 on the gate's samples" in s
    # 20% misses 0.5 x 50% on these samples, the gate's 26% meets it; both FIDs meet 15
    assert _verdicts(s)[:2] == ["**missed** on these samples, met on the gate's", "met"]
    gate["candidate"]["fid"] = 16.0
    assert (
        _verdicts(targets_section(_report(), gate, fid_baseline=30.0))[1]
        == "met on these samples, **missed** on the gate's"
    )


def test_attach_judge_rewrites_its_blocks_in_place(tmp_path, monkeypatch):
    import cvaegan.card as card

    monkeypatch.setattr(card, "judge_section", lambda report, cfg: f"judge figures {report['fid_judge']}\n")
    (tmp_path / "README.md").write_text("# card\n\n" + OLD_JUDGE_LINE + "\n\n## Terms\nmine\n")
    (tmp_path / "figures.json").write_text(json.dumps({"release_gate": {"candidate": {"fid": 9.5}}}))
    card.attach_judge(tmp_path, _report(fid=12.0), {}, fid_baseline=30.0)
    card.attach_judge(tmp_path, _report(fid=11.0), {}, fid_baseline=30.0)
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Targets of this release") == 1 and text.count("judge figures") == 1
    assert "judge figures 11.0" in text and "| 11.00 (0.37 x); 9.50 on the gate's samples | met |" in text
    assert text.index("judge figures") < text.index("## Targets") < text.index("## Terms") and text.endswith("mine\n")
    assert json.loads((tmp_path / "evaluation.json").read_text())["fid_judge"] == 11.0


def test_evaluate_refuses_a_fid_baseline_it_cannot_use(tmp_path, capsys):
    base = ["evaluate", "--weights", str(tmp_path), "--judge", "j", "--data", "d", "--out", str(tmp_path / "r.json")]
    assert cli.main(base + ["--fid-baseline", "30"]) == 1
    assert "add --card" in capsys.readouterr().err
    assert cli.main(base + ["--card", "--fid-baseline", "0"]) == 1
    assert "positive FID" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("broken", ["{not json", "[1, 2]"])
def test_attach_judge_refuses_a_broken_figures_file_before_writing(tmp_path, broken):
    from cvaegan.card import attach_judge
    from cvaegan.errors import InputError

    (tmp_path / "README.md").write_text("# card\n")
    (tmp_path / "figures.json").write_text(broken)
    with pytest.raises(InputError, match="figures.json is not a JSON object.*nothing was written"):
        attach_judge(tmp_path, _report(), {}, fid_baseline=30.0)
    assert (tmp_path / "README.md").read_text() == "# card\n" and not (tmp_path / "evaluation.json").exists()


def test_equal_step_epochs():
    from cvaegan.experiments import equal_step_epochs

    assert equal_step_epochs(40, 5677, 5120) == 77  # the faces experiment: 40 x 10,797 / 5,677 = 76.1, rounded up
    assert equal_step_epochs(3, 100, 0) == 3 and equal_step_epochs(2, 10, 5) == 3


def test_augmentation_experiment_with_its_equal_step_control(trained_export, shapes_dir, tmp_path):
    from cvaegan.experiments import equal_step_epochs, main

    out = tmp_path / "aug"
    args = ["augmentation", "--data", str(shapes_dir), "--weights", str(trained_export), "--out", str(out)]
    args += ["--resolution", "32", "--judge-epochs", "2", "--per-class", "8", "--threads", "1", "--equal-steps"]
    assert main(args) == 0
    res = json.loads((out / "augmentation.json").read_text())
    control = json.loads((out / "judge_real_equal_steps" / "config.json").read_text())["training"]
    both = json.loads((out / "judge_real_plus_generated" / "config.json").read_text())["training"]
    real = control["train_images"]
    assert both["extra_images"] == 32 and control["extra_images"] == 0 and both["train_images"] == real + 32

    # the control takes at least as many optimisation steps as the judge that saw real + generated photos, and
    # less than one epoch more
    def steps(t):
        return t["epochs"] * math.ceil(t["train_images"] / t["batch_size"])

    assert steps(both) <= steps(control) < steps(both) + math.ceil(real / control["batch_size"])
    assert control["epochs"] == res["equal_steps_epochs"] == equal_step_epochs(2, real, 32) > 2
    assert res["top1_real_only_equal_steps"] == control["val_top1"] and 0 <= control["val_top1"] <= 1
    assert set(res) >= {"top1_real_only", "top1_real_plus_generated"}
