"""Refitting C alone on a released weights folder (`cvaegan refit-classifier`): C learns, holes are square and
filled smoothly, only C's files and figures change, samples stay the same, bad input is refused untouched."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cvaegan import CVAEGAN, cli, refit as R
from cvaegan.data import load_images
from cvaegan.hub import load_training_state
from cvaegan.inference import generate
from cvaegan.seeds import z_from_seeds

from conftest import make_shapes_folder


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _samples(folder):
    model = CVAEGAN.from_pretrained(str(folder))
    return generate(model, z_from_seeds(list(range(6)), model.config.z_dim), torch.tensor([0, 1, 2] * 2))


@pytest.mark.slow  # releases a weights folder first
def test_refit_replaces_c_only_and_records_it(released, shapes_dir, tmp_path, capsys):
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    before, samples = _bytes(out), _samples(out)
    assert (out / "running_means.safetensors").is_file() and (out / "discriminator.safetensors").is_file()
    args = ["refit-classifier", "--weights", str(out), "--data", str(shapes_dir), "--epochs", "2", "--threads", "1"]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    assert "refitted C" in printed.out and "held-out photos: whole" in printed.out
    assert "warning: enrolment" in printed.err and "do not refit weights you will enrol" in printed.err
    after = _bytes(out)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {
        "classifier.safetensors",
        "running_means.safetensors",
        "config.json",
        "figures.json",
        "README.md",
    }
    # loads strictly (digests in config.json match); E and G untouched, so the samples are exactly the same
    model = CVAEGAN.from_pretrained(str(out))
    assert torch.equal(_samples(out), samples)
    old_c = load_file(str(released / "classifier.safetensors"))
    new_c = load_file(str(out / "classifier.safetensors"))
    assert set(old_c) == set(new_c) and all(new_c[k].dtype == old_c[k].dtype for k in old_c)
    assert any(not torch.equal(old_c[k], new_c[k]) for k in old_c)
    # C's running feature means re-measured with the new C; D's left alone; a warm start can still load them
    old_m, new_m = load_file(str(released / "running_means.safetensors")), load_training_state(out)["means"]
    assert not torch.equal(old_m["c_real.mean"], new_m["c_real.mean"]) and new_m["c_real.mean"].shape == (3, 32)
    assert torch.equal(old_m["d_real.mean"], new_m["d_real.mean"])
    # the record, and C's figures re-measured on the held-out photos of the 3 trained classes
    figures = json.loads((out / "figures.json").read_text())
    rec = figures["classifier_refit"]
    held_out = figures["val_images"]
    assert rec["epochs"] == 2 and rec["held_out"] and rec["held_out_images"] == held_out == 6
    assert rec["train_images"] == 3 * 16 - held_out and rec["images_seen"] == 2 * rec["train_images"]
    assert rec["threads"] == 1 and rec["wall_s"] > 0 and rec["running_means_refreshed"]
    assert set(rec["c_top1_after"]) == {"whole", "box25"} and all(0 <= v <= 1 for v in rec["c_top1_after"].values())
    assert figures["c_top1_real_val"] == rec["c_top1_after"]["whole"]
    assert len(figures["c_top1_generated_per_class"]) == model.config.num_classes == 3
    card = (out / "README.md").read_text()
    assert card.count("## Classifier refit") == 1 and "(refitted C)" in card and R.ENROLMENT_WARNING in card
    assert f"| C's top-1 on held-out real images | {figures['c_top1_real_val']:.1%} (refitted C) |" in card
    # a second refit keeps the first one's record and still one section in the card
    assert cli.main([*args[:-2], "--epochs", "1"]) == 0
    figures2 = json.loads((out / "figures.json").read_text())
    assert figures2["classifier_refit"]["earlier"]["epochs"] == 2 and figures2["classifier_refit"]["epochs"] == 1
    assert (out / "README.md").read_text().count("## Classifier refit") == 1


def test_refit_teaches_c_the_classes(shapes_dir, tiny_model):
    """From an untrained C: after the refit C names the shapes, whole and with a hole."""
    data = load_images(shapes_dir, 32, progress=False)
    before = R.classifier_top1(tiny_model, data.images.float() / 127.5 - 1, data.labels)
    rec = R.refit_classifier(tiny_model, data, data, epochs=30, lr=1e-3, progress=False)
    assert rec["c_top1_before"]["whole"] == before and rec["steps"] == 30 and rec["batch"] == 64
    assert rec["c_top1_after"]["whole"] >= 0.75 > before + 0.2
    assert rec["c_top1_after"]["box25"] >= 0.5
    assert not tiny_model.classifier.training  # left in eval mode


def test_random_holes_are_smooth_squares(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    assert torch.equal(R.random_holes(x, 0.0, gen), x)
    y = R.random_holes(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(y, R.random_holes(x, 1.0, torch.Generator().manual_seed(3)))  # deterministic per seed
    for i in range(8):
        diff = (y[i] != x[i]).any(0)
        rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 8 - 2 <= h <= 20 and 8 - 2 <= w <= 20  # sides 1/4..5/8 of 32 (a filled pixel may equal the old)
        inside = y[i][:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert inside.abs().max() <= 1  # harmonic fill stays within the known pixels' range


@pytest.mark.slow  # releases a weights folder first
def test_refit_without_held_out_photos_leaves_cs_old_figures_alone(released, shapes_dir, tmp_path):
    """Weights whose training held out no photos: C trains on all of them, is not measured, and the card keeps its
    old C rows (they describe the old C) while its refit section says so."""
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    fig = json.loads((out / "figures.json").read_text())
    (out / "figures.json").write_text(json.dumps({**fig, "split": "training images (no held-out split)"}))
    rows = [line for line in (out / "README.md").read_text().splitlines() if line.startswith("| C's top-1")]
    rec = R.refit_folder(out, shapes_dir, epochs=1, progress=False)
    assert not rec["held_out"] and rec["c_top1_after"] is None and rec["train_images"] == 3 * 16
    card = (out / "README.md").read_text()
    assert all(row in card for row in rows) and "(refitted C)" not in card
    assert "No held-out photos recorded" in card
    assert json.loads((out / "figures.json").read_text())["c_top1_real_val"] == fig["c_top1_real_val"]


@pytest.mark.slow  # releases a weights folder first
def test_refit_refuses_bad_input_and_writes_nothing(released, shapes_dir, tmp_path, capsys):
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    before = _bytes(out)
    # data without one of the model's classes: C would forget it
    partial = make_shapes_folder(tmp_path / "two", classes=2)
    assert cli.main(["refit-classifier", "--weights", str(out), "--data", str(partial)]) == 1
    assert "C would forget them" in capsys.readouterr().err
    for flag, value in (("--epochs", "0"), ("--lr", "-1"), ("--hole-share", "1.5")):
        assert cli.main(["refit-classifier", "--weights", str(out), "--data", str(shapes_dir), flag, value]) == 1
        assert "hole_p in [0, 1]" in capsys.readouterr().err
    assert cli.main(["refit-classifier", "--weights", str(tmp_path / "nowhere"), "--data", str(shapes_dir)]) == 1
    capsys.readouterr()
    assert _bytes(out) == before
