"""Shared fixtures: a synthetic labelled image set (coloured shapes per class) and tiny models, all on CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from cvaegan.config import ModelConfig  # noqa: E402
from cvaegan.models import CVAEGAN  # noqa: E402

# Tests that need these fixtures are slow (they train a model first), as are browser tests; the inner
# loop `pytest -m "not slow"` leaves them out. Other slow tests carry @pytest.mark.slow themselves.
SLOW_FIXTURES = {"trained_export"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]


def draw_shape(kind: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `kind`: a coloured shape of that class at a random place on a noisy background."""
    bg = (rng.random((size, size, 3)) * 60 + 20).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.32) * size
    cx, cy = rng.uniform(r, size - r, 2)
    col = COLOURS[kind % len(COLOURS)]
    shape = SHAPES[kind % len(SHAPES)]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    else:
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    return img


def make_shapes_folder(
    root: Path, classes: int = 4, per_class: int = 16, size: int = 40, seed: int = 0, names: bool = True
) -> Path:
    """Write root/<class_folder>/<i>.png (+ metadata.csv with display names and an attr_ column)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,class_folder,class_name,attr_x"]
    for c in range(classes):
        folder = f"{c:03d}.{SHAPES[c % 4]}"
        (root / folder).mkdir(exist_ok=True)
        for i in range(per_class):
            draw_shape(c, size, rng).save(root / folder / f"{i:03d}.png")
            rows.append(f"{folder}/{i:03d}.png,{folder},{SHAPES[c % 4].title()} {c},{rng.random():.3f}")
    if names:
        (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes_folder(tmp_path_factory.mktemp("shapes") / "data")


def tiny_config(num_classes: int = 4, resolution: int = 32, **kw) -> ModelConfig:
    args = dict(z_dim=16, base_channels=8, max_channels=32, label_dim=8, feature_dim=32)
    args.update(kw)
    return ModelConfig(resolution=resolution, num_classes=num_classes, **args)


@pytest.fixture()
def tiny_model() -> CVAEGAN:
    torch.manual_seed(0)
    cfg = tiny_config(class_names=["Circle 0", "Square 1", "Triangle 2", "Cross 3"])
    m = CVAEGAN(cfg)
    # make BatchNorm running stats non-trivial so eval-mode outputs depend on them
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.8, 1.2)
    return m.eval()


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory, shapes_dir) -> Path:
    """A tiny model trained for a few hundred steps on the shapes (shared by several test files)."""
    from cvaegan.config import TrainConfig
    from cvaegan.data import load_images
    from cvaegan.train import train

    data = load_images(shapes_dir, 32, progress=False)
    out = tmp_path_factory.mktemp("run")
    tcfg = TrainConfig(
        steps=TRAINED_STEPS,
        batch_size=32,
        lr=1e-3,
        log_every=20,
        sample_every=100,
        checkpoint_every=100,
        ema_decay=None,
        device="cpu",
    )
    return train(data, out / "run", tcfg, tiny_config(z_dim=16, base_channels=16, max_channels=64), progress=False)


TRAINED_STEPS = 300


@pytest.fixture(scope="session")
def trained_with_directions(tmp_path_factory, trained_export, shapes_dir) -> Path:
    """A copy of trained_export with latent directions saved (the app's sliders need some)."""
    import shutil

    from cvaegan.data import load_images
    from cvaegan.directions import compute_directions

    out = tmp_path_factory.mktemp("with_directions") / "weights"
    shutil.copytree(trained_export, out)
    model = CVAEGAN.from_pretrained(str(out))
    data = load_images(shapes_dir, model.config.resolution, progress=False)
    compute_directions(model, data.images, data.labels, k=4)
    model.save_directions(out)
    return out


def record_optimizer_steps(trainer) -> list:
    """Wrap every optimiser's step: the returned list collects (network, networks holding non-zero gradients)
    at each step, in order."""
    seen = []
    for name, opt in trainer.opt.items():
        orig = opt.step

        def step(*a, _name=name, _orig=orig, **kw):
            with_grad = sorted(
                k
                for k, net in trainer.nets.items()
                if any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
            )
            seen.append((_name, with_grad))
            return _orig(*a, **kw)

        opt.step = step
    return seen


EXCLUDED = "002.triangle"  # a class in the middle: the model's later classes sit one index below the data's


@pytest.fixture(scope="module")
def excluded_run(tmp_path_factory, shapes_dir):
    """A tiny run trained for a few steps with one class left out (--exclude-classes) and a held-out split; it
    exports D and the running feature means (the default), as a weights folder for warm starts carries them."""
    from cvaegan.config import TrainConfig
    from cvaegan.data import load_images
    from cvaegan.train import train

    data = load_images(shapes_dir, 32, progress=False)
    run = tmp_path_factory.mktemp("excluded") / "run"
    tcfg = TrainConfig(
        steps=6,
        batch_size=8,
        log_every=2,
        sample_every=6,
        checkpoint_every=6,
        val_fraction=0.1,
        exclude_classes=EXCLUDED,
        ema_decay=None,  # an EMA's BatchNorm re-estimation would double the cost of this fixture
        device="cpu",
    )
    train(data, run, tcfg, tiny_config(), progress=False)
    return run


@pytest.fixture(scope="module")
def released(tmp_path_factory, excluded_run, shapes_dir):
    """The tiny run with one class left out, a held-out split, D and the running means, released."""
    from cvaegan.release import release

    out = tmp_path_factory.mktemp("released") / "weights"
    release(excluded_run, out, shapes_dir, "shapes", hardware="test CPU", components=2, samples_per_class=2)
    return out


@pytest.fixture(scope="session")
def class_judge(tmp_path_factory, shapes_dir):
    """A tiny class judge of all 4 classes: one more than the excluded run's model has."""
    from cvaegan.data import load_images
    from cvaegan.judge import train_judge

    out = tmp_path_factory.mktemp("judge") / "judge"
    train_judge(
        load_images(shapes_dir, 32, progress=False), out, epochs=1, batch_size=16, widths=[8, 16], progress=False
    )
    return out
