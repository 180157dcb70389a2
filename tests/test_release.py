"""Publishing a run: the release folder loads strictly and carries directions, figures, pictures and a card."""

import json

import numpy as np
from PIL import Image

from cvaegan import CVAEGAN, service as S
from cvaegan.card import directions_table
from cvaegan.data import load_images
from cvaegan.directions import judged_effects
from cvaegan.judge import train_judge
from cvaegan.release import release


def test_release_folder(trained_export, shapes_dir, tmp_path):
    out = tmp_path / "weights" / "shapes"
    data = load_images(shapes_dir, 32, progress=False)
    aj = train_judge(
        data, tmp_path / "attr_judge", epochs=1, batch_size=16, widths=[8, 16], progress=False, attributes=True
    )
    figures = release(
        trained_export.parent,
        out,
        shapes_dir,
        "shapes",
        hardware="test CPU",
        notes="Tiny test model.",
        examples=tmp_path / "examples",
        attribute_judge=tmp_path / "attr_judge",
        direction_judge=tmp_path / "attr_judge",
    )
    ex = sorted((tmp_path / "examples").glob("shapes_*_image.png"))
    assert len(ex) == 3 and all(p.with_name(p.name.replace("_image", "_mask")).is_file() for p in ex)
    for name in (
        "config.json",
        "encoder.safetensors",
        "generator.safetensors",
        "classifier.safetensors",
        "directions.safetensors",
        "samples.png",
        "thumbnails.png",
        "loss_curves.png",
        "README.md",
        "figures.json",
    ):
        assert (out / name).is_file(), name
    model = CVAEGAN.from_pretrained(str(out))
    assert model.config.directions[:3] == ["attr_x", "pc1", "pc2"]
    assert 0 <= figures["c_top1_real_val"] <= 1 and len(figures["c_top1_generated_per_class"]) == 4
    assert figures["recon_psnr_val_db"] > 5 and figures["split"].startswith("training images")
    assert set(figures["inpaint_psnr_by_iterations"]) == {"1", "2", "4", "8"}
    checks = figures["directions"]
    assert set(checks) == set(model.config.directions) and len(checks["pc1"]["class_kept"]) == 3
    assert "## Latent directions" in (out / "README.md").read_text()
    # the attribute judge re-measured every direction; attr_x's own change per slider unit is reported
    assert len(checks["attr_x"]["judged"]["attr_x"]) == 3 and "per_unit" in checks["attr_x"]
    assert "per_unit" not in checks["pc1"] and set(checks["pc1"]["change_sd"]) == set(aj.targets)
    assert figures["attribute_judge"]["val_r2"] == aj.training["val_r2"]
    assert (
        "attribute judge" in (out / "README.md").read_text()
        and "n/a (principal component)" in (out / "README.md").read_text()
    )
    card = (out / "README.md").read_text()
    # the attr_* directions were fitted on generated samples scored by the same judge: the card says so
    assert figures["direction_fits"]["attr_x"]["source"] == "generated samples, judged"
    assert figures["direction_fits"]["attr_x"]["n"] == 4096 and figures["direction_judge"]["same_as_attribute_judge"]
    assert "NOT independent of the fit" in card and "on 4,096 generated samples" in card
    assert checks["pc1"]["samples"] == 16 and "over 16 samples" in card  # all 4 classes x 4 seeds
    assert "test CPU" in card and "not** an independent judge" in card and "Tiny test model." in card
    assert f"{figures['c_top1_real_val']:.1%}" in card
    assert json.loads((out / "figures.json").read_text())["steps"] == figures["steps"]
    dirs = Image.open(out / "directions.png")  # 2 rows per direction, 5 columns, 2-px padding
    assert dirs.size[0] == 5 * 32 + 6 * 2 and dirs.size[1] == 2 * len(model.config.directions) * 34 + 2
    assert "![directions](directions.png)" in card
    sheet = Image.open(out / "thumbnails.png")
    assert sheet.size == (4 * 32, 32)
    # the app's picker slices the shipped sheet: one thumbnail per class, equal to a fresh render
    model.source = str(out)
    thumbs = S._thumbnails(model)
    assert len(thumbs) == 4 and thumbs[2].size == (32, 32)
    assert np.array_equal(np.asarray(thumbs[2]), np.asarray(sheet.crop((64, 0, 96, 32))))


def test_judged_effects_known_answer():
    row = {"amounts": [-2.0, 0.0, 2.0], "judged": {"attr_smile": [0.0, 1.0, 2.0], "attr_yaw": [5.0, 5.0, -1.0]}}
    e = judged_effects("attr_smile", row, {"attr_smile": 0.5, "attr_yaw": 3.0})
    assert e["per_unit"] == 1.0  # +2 attribute units = 4 SD over 4 slider units of one SD each
    assert judged_effects("attr_smile", row, {"attr_smile": 0.5, "attr_yaw": 3.0}, "attribute units")["per_unit"] == 0.5
    assert e["change_sd"] == {"attr_smile": 4.0, "attr_yaw": -2.0} and e["largest_other"] == ["attr_yaw", -2.0]
    row.update(e, class_kept=[1.0, 1.0, 0.5], measured=[])
    table = directions_table(
        {"attr_smile": row}, {"resolution": 64, "training": {"epochs": 3, "val_r2": {"attr_smile": 0.5}}}
    )
    assert "| attr_smile | +-2 | 100% / 100% / 50% | n/a | 1.00 (+4.00 SD) | yaw -2.00 |" in table


def test_release_counts_the_steps_of_the_checkpoint_not_of_the_log(trained_export, tmp_path):
    """A run that logged past its last checkpoint: the card's steps and wall time stop at the checkpoint."""
    import shutil

    from cvaegan.release import checkpoint_rows

    run = tmp_path / "run"
    shutil.copytree(trained_export.parent, run)
    step, rows = checkpoint_rows(run)
    assert step == rows[-1]["step"] and len(rows) > 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step + 150, "loss/C": 0.1, "time/step_s": 1.0}) + "\n")
    again_step, again_rows = checkpoint_rows(run)
    assert again_step == step and again_rows == rows
