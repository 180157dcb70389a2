"""Publishing a run: the release folder loads strictly and carries directions, figures, pictures and a card."""
import json

from PIL import Image

from cvaegan import CVAEGAN, service as S
from cvaegan.release import release


def test_release_folder(trained_export, shapes_dir, tmp_path):
    out = tmp_path / "weights" / "shapes"
    figures = release(trained_export.parent, out, shapes_dir, "shapes", hardware="test CPU", notes="Tiny test model.",
                      examples=tmp_path / "examples")
    ex = sorted((tmp_path / "examples").glob("shapes_*_image.png"))
    assert len(ex) == 3 and all(p.with_name(p.name.replace("_image", "_mask")).is_file() for p in ex)
    for name in ("config.json", "encoder.safetensors", "generator.safetensors", "classifier.safetensors",
                 "directions.safetensors", "samples.png", "thumbnails.png", "loss_curves.png", "README.md", "figures.json"):
        assert (out / name).is_file(), name
    model = CVAEGAN.from_pretrained(str(out))
    assert model.config.directions[:3] == ["attr_x", "pc1", "pc2"]
    assert 0 <= figures["c_top1_real_val"] <= 1 and len(figures["c_top1_generated_per_class"]) == 4
    assert figures["recon_psnr_val_db"] > 5 and figures["split"].startswith("training images")
    assert set(figures["inpaint_psnr_by_iterations"]) == {"1", "2", "4", "8"}
    checks = figures["directions"]
    assert set(checks) == set(model.config.directions) and len(checks["pc1"]["class_kept"]) == 3
    assert "## Latent directions" in (out / "README.md").read_text()
    card = (out / "README.md").read_text()
    assert "test CPU" in card and "not** an independent judge" in card and "Tiny test model." in card
    assert f"{figures['c_top1_real_val']:.1%}" in card
    assert json.loads((out / "figures.json").read_text())["steps"] == figures["steps"]
    sheet = Image.open(out / "thumbnails.png")
    assert sheet.size == (4 * 32, 32)
    # the app's picker slices the shipped sheet: one thumbnail per class, equal to a fresh render
    model.source = str(out)
    thumbs = S._thumbnails(model)
    assert len(thumbs) == 4 and thumbs[2].size == (32, 32)
    assert list(thumbs[2].getdata()) == list(sheet.crop((64, 0, 96, 32)).getdata())
