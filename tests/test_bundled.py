"""The weights shipped in weights/: each loads strictly, matches its config, is small enough, samples
deterministically, and the CLI works on it from a fresh clone (no network)."""

import json
import subprocess
import sys

import pytest
import torch

from cvaegan import CVAEGAN
from cvaegan.card import THUMBNAILS, sheet_file
from cvaegan.inference import sample
from cvaegan.release import check_folder_size
from cvaegan.service import bundled_names

from conftest import ROOT

BUNDLED = bundled_names()


def test_faces_weights_are_bundled():
    assert "faces" in BUNDLED, "weights/faces is missing: the app would have nothing to show"


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_load_strictly_and_match_config(name):
    folder = ROOT / "weights" / name
    cfg = json.loads((folder / "config.json").read_text())
    model = CVAEGAN.from_pretrained(str(folder))  # strict: keys, shapes and sha256 checked
    assert model.config.num_classes == cfg["num_classes"] == len(cfg["class_names"])
    assert model.generator(torch.zeros(1, cfg["z_dim"]), torch.tensor([0])).shape[-1] == cfg["resolution"]
    check_folder_size(folder)  # at most 20 MiB, each file at most 15 MiB
    for extra in ("README.md", "samples.png", "loss_curves.png"):
        assert (folder / extra).is_file(), extra
    assert sheet_file(folder, THUMBNAILS) is not None, "no thumbnails sheet"  # .jpg, or .png of older releases
    assert cfg["directions"], "no latent directions saved"


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_sampling_is_deterministic(name):
    model = CVAEGAN.from_pretrained(str(ROOT / "weights" / name))
    cls = model.config.class_names[-1]
    a = sample(model, cls, [3])
    b = sample(model, cls, [3])
    assert torch.equal(a, b) and a.abs().max() <= 1


@pytest.mark.slow  # a fresh `python -m cvaegan` process per weights folder
@pytest.mark.parametrize("name", BUNDLED)
def test_cli_sample_on_bundled_weights(name, tmp_path):
    model = CVAEGAN.from_pretrained(str(ROOT / "weights" / name))
    cls = model.config.class_names[-1]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvaegan",
            "sample",
            "--weights",
            f"weights/{name}",
            "--class",
            cls,
            "--seeds",
            "0-7",
            "--out",
            str(tmp_path / "x.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.png").stat().st_size > 0


# (weights, the guesser's share w measured by `fit-guesser` / the release, top-1 of the mixed guess on 2 samples of
# every class when it shipped, of the guesser alone): faces 94.5% / 31.6% (C alone 97.7%), flowers 64.2% / 56.9%,
# birds 92.6% / 58.4% (C alone 97.9%; shipped 2026-12-06; the share re-measured by birds release v6, 2026-12-07: 0.5)
GUESSERS = [("faces", 0.25, 0.6), ("flowers", 0.75, 0.45), ("birds", 0.5, 0.6)]


@pytest.mark.parametrize("name,weight,floor", GUESSERS)
def test_bundled_guess_mixes_c_and_its_guesser(name, weight, floor):
    """Every bundled weights folder carries a class guesser asked together with C (the guess is p_guesser^w * p_C^(1-w)
    with the measured share w): it loads strictly, the app names both as the guess's source, and the mixed guess
    names the class of the model's own samples far above chance (at most 1%) and more often than the guesser alone,
    so a broken or shuffled guesser file or a lost share fails here."""
    from cvaegan.inference import generate, guess_probabilities, guess_source
    from cvaegan.seeds import z_from_seeds

    model = CVAEGAN.from_pretrained(str(ROOT / "weights" / name))
    assert model.guesser is not None and model.config.guesser["weight"] == weight
    assert guess_source(model) == "C and the class guesser"
    k = model.config.num_classes
    classes = torch.arange(k).repeat(2)
    x = generate(model, z_from_seeds(list(range(2 * k)), model.config.z_dim), classes)
    probs = guess_probabilities(model, x)
    assert probs.shape == (2 * k, k)
    mixed = (probs.argmax(1) == classes).float().mean()
    assert mixed > floor
    model.config.guesser["weight"] = 1.0  # the guesser alone knows whole samples less well
    assert (guess_probabilities(model, x).argmax(1) == classes).float().mean() < mixed
