"""Data loading: folders and tars, metadata names, resizing any image, clear errors, deterministic split."""

import tarfile
import warnings

import pytest
import torch
from PIL import Image

from cvaegan.data import DataError, load_images, split_indices

from conftest import make_shapes_folder


def test_folder_and_tar_give_the_same_images(shapes_dir, tmp_path):
    tar_path = tmp_path / "pack" / "shapes.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tf:
        for p in sorted(shapes_dir.rglob("*.png")):
            tf.add(p, arcname=p.relative_to(shapes_dir).as_posix())
    (tar_path.parent / "metadata.csv").write_text((shapes_dir / "metadata.csv").read_text())
    a = load_images(shapes_dir, 32, progress=False)
    b = load_images(tar_path, 32, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.class_names == b.class_names == ["Circle 0", "Square 1", "Triangle 2", "Cross 3"]
    assert a.class_folders[0] == "000.circle"
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert "attr_x" in a.attributes and a.attributes["attr_x"].shape == (64,)


def test_any_size_and_mode_is_cropped_and_resized(tmp_path):
    root = tmp_path / "d"
    for cls, (mode, size) in {"a": ("L", (50, 30)), "b": ("RGBA", (20, 90)), "c": ("P", (64, 64))}.items():
        (root / cls).mkdir(parents=True)
        Image.new(mode, size, 128 if mode != "RGBA" else (10, 200, 30, 255)).save(root / cls / "x.png")
    d = load_images(root, 32, progress=False)
    assert d.images.shape == (3, 3, 32, 32)
    assert d.class_names == ["a", "b", "c"]  # no metadata.csv: the folder names
    assert d.images[1, 1].float().mean() > 150  # the RGBA image kept its green


def test_unreadable_images_are_skipped_with_a_warning(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=3, names=False)
    (root / "000.circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "000.circle" / "empty.jpg").write_bytes(b"")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_images(root, 32, progress=False)
    assert d.skipped == 2 and len(d.labels) == 6
    assert any("skipped 2 unreadable" in str(x.message) for x in w)


@pytest.mark.parametrize(
    "layout,match",
    [
        ("missing", "does not exist"),
        ("no_classes", "no class folders"),
        ("one_class", "only one class"),
        ("empty_class", "no images"),
        ("all_broken", "could be read"),
    ],
)
def test_clear_errors(tmp_path, layout, match):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        make_shapes_folder(root, classes=1, per_class=2, names=False)
    if layout == "empty_class":
        make_shapes_folder(root, classes=2, per_class=2, names=False)
        (root / "zzz_empty").mkdir()
    if layout == "all_broken":
        for c in ("a", "b"):
            (root / c).mkdir()
            (root / c / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_images(root, 32, progress=False)


def test_split_is_deterministic_per_class_and_disjoint():
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 3)
    tr, va = split_indices(labels, 0.1)
    tr2, va2 = split_indices(labels, 0.1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == len(labels)
    assert torch.bincount(labels[va], minlength=3).tolist() == [2, 1, 1]
    assert len(split_indices(labels, 0.0)[1]) == 0
