"""The judge and the evaluation metrics: known answers for each metric, then judge + evaluate end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import cli, evaluate as E
from cvaegan.card import OLD_JUDGE_LINE
from cvaegan.data import load_images
from cvaegan.hub import WeightsError
from cvaegan.judge import Judge, JudgeConfig, load_judge, save_judge, top1, train_judge


def _random_judge(res=32, k=4):
    torch.manual_seed(0)
    return Judge(JudgeConfig(resolution=res, num_classes=k)).eval()


def _images(n, res=32, seed=0):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_kid_zero_for_identical_sets_and_positive_otherwise():
    j = _random_judge()
    x = _images(200)
    same = E.fid_kid(j, x, x)
    assert abs(same["fid"]) < 1e-6 and abs(same["kid_mean"]) < 5e-3
    other = E.fid_kid(j, x, _images(200, seed=1) * 0.3)
    assert other["fid"] > 0.1 and other["kid_mean"] > same["kid_mean"]


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
                "--device",
                "cpu",
                "--card",
            ]
        )
        == 0
    )
    card = (weights / "README.md").read_text()
    assert "Independent judge" in card and OLD_JUDGE_LINE not in card and card.endswith("more text\n")
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
    for kind in ("centre_box", "brush"):
        methods = r["inpainting"][kind]
        assert set(methods) >= {"cvaegan", "cvaegan_predicted_class", "telea", "navier_stokes", "mean_fill"}
        assert all(m["psnr_db"] > 0 for k, m in methods.items() if isinstance(m, dict))
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
