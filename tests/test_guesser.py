"""The class guesser of inpainting's "auto" mode (`cvaegan fit-guesser`): it is added to a weights folder without
touching anything else, loads strictly, is what the "auto" inpainting asks, and bad input changes nothing."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import CVAEGAN, blend, cli, guesser as GS, release as REL, service as S
from cvaegan.data import load_images, split_indices
from cvaegan.inference import generate
from cvaegan.judge import keep_classes
from cvaegan.seeds import z_from_seeds
from cvaegan.serialization import WeightsError

from conftest import EXCLUDED, make_shapes_folder


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _samples(model):
    return generate(model, z_from_seeds(list(range(6)), model.config.z_dim), torch.tensor([0, 1, 2] * 2))


def _photo_and_hole(size=40):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")
    mask = np.zeros((size, size), bool)
    mask[10:25, 12:30] = True
    return photo, mask


@pytest.mark.slow  # releases a weights folder first
def test_fit_guesser_adds_it_alone_and_auto_inpainting_asks_it(released, excluded_run, shapes_dir, tmp_path, capsys):
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    before = _bytes(out)
    samples = _samples(CVAEGAN.from_pretrained(str(out)))
    args = ["fit-guesser", "--weights", str(out), "--data", str(shapes_dir), "--epochs", "2", "--widths", "4,8"]
    assert cli.main([*args, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "added a class guesser" in printed and "held-out photos, guesser / C" in printed
    after = _bytes(out)
    assert set(after) - set(before) == {"guesser.safetensors"}
    assert {n for n in before if before[n] != after[n]} == {"config.json", "figures.json", "README.md"}
    # loads strictly; the guesser has one output per class of the model (the left-out class is not one of them)
    model = CVAEGAN.from_pretrained(str(out))
    assert model.guesser is not None and model.guesser.fc.out_features == model.config.num_classes == 3
    assert model.config.guesser["widths"] == [4, 8] and "guesser.safetensors" in model.config.files
    assert torch.equal(_samples(model), samples)  # E, G untouched
    rec = json.loads((out / "figures.json").read_text())["guesser"]
    assert rec["held_out_images"] == 6 and rec["train_images"] == 3 * 16 - 6 and rec["images_seen"] == 2 * 42
    assert rec["threads"] == 1 and set(rec["guesser_top1"]) == set(rec["c_top1"]) == {"whole", "box25"}
    card = (out / "README.md").read_text()
    assert card.count("## Class guesser") == 1 and "widths 4, 8" in card and "Kept from" not in card
    # "auto" inpainting asks the guesser, not C: make it sure of class 2 and C of class 0
    with torch.no_grad():
        model.guesser.fc.bias.fill_(-50.0)
        model.guesser.fc.bias[2] = 50.0
        model.classifier.out.bias.fill_(-50.0)
        model.classifier.out.bias[0] = 50.0
    photo, mask = _photo_and_hole()
    r = blend.inpaint(model, photo, mask, None, iterations=1)
    assert r["class"] == 2 and r["top"][0] == (2, pytest.approx(1.0))
    assert blend.inpaint(model, photo, mask, 1, iterations=1)["class"] == 1  # a chosen class still wins
    editor = {"background": photo, "layers": [Image.fromarray((mask[:, :, None] * 255).repeat(4, 2).astype(np.uint8))]}
    _, _, text = S.inpaint(model, editor, "auto", 1, 0)
    assert "the class guesser's guess, p = 1.00" in text
    _, _, text = S.inpaint_full(model, editor, "auto", 1, 0)
    assert "The class guesser's guesses:" in text
    # fitting again replaces it: one section, one file
    assert cli.main([*args[:-2], "--widths", "4", "--epochs", "1", "--threads", "1"]) == 0
    assert CVAEGAN.from_pretrained(str(out)).config.guesser["widths"] == [4]
    assert (out / "README.md").read_text().count("## Class guesser") == 1
    # a new release of the same classes keeps it (it learned the photos, not the networks), re-measured
    REL.release(excluded_run, out, shapes_dir, "shapes", hardware="test CPU", components=2, samples_per_class=2)
    model = CVAEGAN.from_pretrained(str(out))
    assert model.guesser is not None and model.config.guesser["widths"] == [4]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["guesser"]["carried_over"] and figures["guesser"]["held_out_images"] == 6
    card = (out / "README.md").read_text()
    assert card.count("## Class guesser") == 1 and "Kept from the weights released before" in card
    # without its record (so nothing says what it is) a release drops it rather than leave an unlisted file
    (out / "figures.json").write_text(json.dumps({k: v for k, v in figures.items() if k != "guesser"}))
    REL.release(excluded_run, out, shapes_dir, "shapes", hardware="test CPU", components=2, samples_per_class=2)
    assert not (out / "guesser.safetensors").exists() and CVAEGAN.from_pretrained(str(out)).guesser is None
    assert cli.main([*args[:-2], "--widths", "4", "--epochs", "1", "--threads", "1"]) == 0
    # a damaged guesser file is refused by name when loading
    raw = bytearray((out / "guesser.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (out / "guesser.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="guesser.safetensors"):
        CVAEGAN.from_pretrained(str(out))


@pytest.mark.slow  # releases a weights folder first
def test_fit_guesser_refuses_bad_input_and_writes_nothing(released, shapes_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    before = _bytes(out)
    base = ["fit-guesser", "--weights", str(out), "--data", str(shapes_dir), "--threads", "1"]
    for flag, value, says in (
        ("--epochs", "0", "need --epochs >= 1"),
        ("--widths", "4,x", "--widths must be whole numbers"),
        ("--widths", "4,0", "1 to 6 positive --widths"),
        ("--widths", "20,40", "multiples of 8"),
    ):
        assert cli.main([*base, flag, value]) == 1
        assert says in capsys.readouterr().err
    partial = make_shapes_folder(tmp_path / "two", classes=2)
    assert cli.main(["fit-guesser", "--weights", str(out), "--data", str(partial), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "the data has no photos of" in err and "the guesser would not know them" in err
    # a folder that would grow past the release limit keeps what it had
    monkeypatch.setattr(REL, "MAX_FOLDER_BYTES", REL.check_folder_size(out) + 100)
    assert cli.main([*base, "--epochs", "1", "--widths", "4"]) == 1
    err = capsys.readouterr().err
    assert "would take it over" in err and "narrower --widths" in err and "left as it was" in err
    assert _bytes(out) == before
    # weights that hold out another share than the guesser would: refused before training
    fig = json.loads((out / "figures.json").read_text())
    (out / "figures.json").write_text(json.dumps({**fig, "val_fraction": 0.2}))
    assert cli.main([*base, "--epochs", "1"]) == 1
    assert "holds out 0.2 of the photos" in capsys.readouterr().err


def test_keep_classes_keeps_the_split_of_all_the_data(shapes_dir):
    """A guesser trains on the model's classes only but on the split drawn over all the data, so it never sees
    the photos the weights were measured on."""
    data = load_images(shapes_dir, 32, progress=False)
    tr, va = split_indices(data.labels, 0.1)
    kept_folders = [f for f in data.class_folders if f != EXCLUDED]
    kept, tr2, va2 = keep_classes(data, kept_folders, tr, va)
    assert kept.class_folders == kept_folders and kept.num_classes == data.num_classes - 1
    full_val = {data.paths[i] for i in va.tolist() if data.class_folders[data.labels[i]] != EXCLUDED}
    assert {kept.paths[i] for i in va2.tolist()} == full_val and len(tr2) + len(va2) == len(kept.labels)
    assert all(kept.class_folders[kept.labels[i]] == kept.paths[i].split("/")[0] for i in range(len(kept.labels)))
    with pytest.raises(GS.InputError, match="no photos of 1 of the 2 classes"):
        keep_classes(data, [kept_folders[0], "999.nothing"])


def test_a_model_without_guesser_lets_c_guess(tiny_model):
    photo, mask = _photo_and_hole()
    with torch.no_grad():
        tiny_model.classifier.out.bias.fill_(-50.0)
        tiny_model.classifier.out.bias[3] = 50.0
    assert tiny_model.guesser is None
    assert blend.inpaint(tiny_model, photo, mask, None, iterations=1)["class"] == 3


def test_a_class_enrolled_after_the_guesser_is_still_guessed_by_c(tiny_model):
    """The guesser knows the trained classes (here 3 of the tiny model's 4, as if class 3 had been enrolled after
    it was fitted): when C takes the photo for the enrolled class, C's guess stands; otherwise the guesser's."""
    from cvaegan.inference import guess_probabilities
    from cvaegan.judge import Judge, JudgeConfig

    tiny_model.guesser = Judge(JudgeConfig(resolution=32, num_classes=3, widths=[4, 8])).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tiny_model.guesser.fc.bias.copy_(torch.tensor([-50.0, 50.0, -50.0]))
        tiny_model.classifier.out.bias.copy_(torch.tensor([-50.0, -50.0, -50.0, 50.0]))
    p = guess_probabilities(tiny_model, x)
    assert p.shape == (2, 4) and p.argmax(1).tolist() == [3, 3]  # C names the enrolled class: it stands
    with torch.no_grad():
        tiny_model.classifier.out.bias.copy_(torch.tensor([50.0, -50.0, -50.0, -50.0]))
    p = guess_probabilities(tiny_model, x)
    assert p.argmax(1).tolist() == [1, 1] and torch.allclose(p.sum(1), torch.ones(2))  # the guesser's, not C's 0


def test_weights_saved_without_the_guesser_network_do_not_promise_one(tiny_model, tmp_path):
    """A model whose config still describes a guesser it does not hold (a run warm-started from weights that had
    one) saves weights without the entry, so they load; with the network, both are saved and load strictly."""
    import dataclasses

    from cvaegan.models import build_guesser

    tiny_model.config = dataclasses.replace(tiny_model.config, guesser={"widths": [4, 8], "stem_stride": 2})
    tiny_model.save_pretrained(tmp_path / "a")
    loaded = CVAEGAN.from_pretrained(str(tmp_path / "a"))
    assert loaded.guesser is None and loaded.config.guesser == {}
    tiny_model.config = dataclasses.replace(tiny_model.config, guesser={"widths": [4, 8], "stem_stride": 2})
    tiny_model.guesser = build_guesser(tiny_model.config)
    tiny_model.save_pretrained(tmp_path / "b")
    loaded = CVAEGAN.from_pretrained(str(tmp_path / "b"))
    assert loaded.guesser is not None and loaded.config.guesser["widths"] == [4, 8]
    for k, v in tiny_model.guesser.state_dict().items():
        assert torch.allclose(loaded.guesser.state_dict()[k], v.half().float())


def test_the_auto_guess_weighs_the_guesser_against_c(tiny_model):
    """With the entry's weight w the guess is p_guesser^w * p_C^(1 - w), normalised; w = 1 is the guesser alone."""
    import dataclasses

    from cvaegan.inference import guess_probabilities, guess_source
    from cvaegan.judge import Judge, JudgeConfig
    from cvaegan.models import build_guesser

    tiny_model.guesser = Judge(JudgeConfig(resolution=32, num_classes=4, widths=[4, 8])).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tiny_model.guesser.fc.bias.copy_(torch.tensor([4.0, 3.0, -2.0, 0.0]))
        tiny_model.classifier.out.bias.copy_(torch.tensor([-3.0, 3.5, 0.0, 1.0]))
        pg = tiny_model.guesser(x)[0].softmax(1)
        pc = tiny_model.classifier(x)[0].softmax(1)
    named = {1.0: "the class guesser", 0.5: "C and the class guesser", 0.25: "C and the class guesser", 0.0: "C"}
    for w in (1.0, 0.5, 0.25, 0.0):
        tiny_model.config = dataclasses.replace(tiny_model.config, guesser={"widths": [4, 8], "weight": w})
        expected = pg**w * pc ** (1 - w)
        assert torch.allclose(guess_probabilities(tiny_model, x), expected / expected.sum(1, keepdim=True), atol=1e-5)
        assert guess_source(tiny_model) == named[w]  # what the app and the card say guessed
        # the app's line names them, with the right verb when they are not sure
        text = S.top_text(tiny_model, [(1, 0.3)], guess_source(tiny_model))
        assert text.startswith(named[w][:1].upper() + named[w][1:] + "'s guesses")
        assert (" are not confident" if w in (0.5, 0.25) else " is not confident") in text
    assert guess_probabilities(tiny_model, x).argmax(1).tolist() != pg.argmax(1).tolist()  # C's guess at w = 0
    bad = dataclasses.replace(tiny_model.config, guesser={"widths": [4, 8], "weight": 1.5})
    with pytest.raises(WeightsError, match="guesser entry is broken"):
        build_guesser(bad)


@pytest.mark.slow  # releases a weights folder first
def test_the_guessers_share_is_measured_after_the_cards_photos(released, shapes_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "weights"
    shutil.copytree(released, out)
    args = ["fit-guesser", "--weights", str(out), "--data", str(shapes_dir), "--epochs", "1", "--widths", "4,8"]
    assert cli.main([*args, "--threads", "1"]) == 0
    assert "too few held-out photos beyond the card's" in capsys.readouterr().out  # 6 held-out photos, all the card's
    rec = json.loads((out / "figures.json").read_text())["guesser"]
    assert (
        rec["weight"] == 1.0 and rec["mix"] is None and CVAEGAN.from_pretrained(str(out)).config.guesser["weight"] == 1
    )
    before = _bytes(out)
    monkeypatch.setattr(GS, "CARD_PHOTOS", 2)  # the tiny data's 6 held-out photos: 2 for "the card", 4 to weigh on
    monkeypatch.setattr(GS, "MIN_MIX_PHOTOS", 4)
    assert cli.main(["fit-guesser", "--weights", str(out), "--data", str(shapes_dir), "--mix-only"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 on 4 held-out photos" in printed and "<- kept" in printed
    after = _bytes(out)
    assert {n for n in before if before[n] != after[n]} <= {"config.json", "figures.json", "README.md"}
    assert after["guesser.safetensors"] == before["guesser.safetensors"]
    rec = json.loads((out / "figures.json").read_text())["guesser"]
    table = rec["mix"]["top1"]
    assert set(table) == {"0", "0.25", "0.5", "0.75", "1"} and rec["mix"]["photos"] == 4 and rec["mix_measured"]
    z = rec["mix"]["z_against_the_guesser_alone"]
    eligible = ["1"] + [w for w in z if z[w] >= 1.64]
    assert set(z) == set(table) - {"1"} and rec["weight"] == max(
        float(w) for w in eligible if table[w]["mean"] == max(table[v]["mean"] for v in eligible)
    )
    assert CVAEGAN.from_pretrained(str(out)).config.guesser["weight"] == rec["weight"]
    assert (
        f"w = {rec['weight']:g}, of 0, 0.25, 0.5, 0.75, 1 the one right most often" in (out / "README.md").read_text()
    )
    # without a guesser there is nothing to weigh
    shutil.rmtree(out)
    shutil.copytree(released, out)
    assert cli.main(["fit-guesser", "--weights", str(out), "--data", str(shapes_dir), "--mix-only"]) == 1
    assert "has no class guesser" in capsys.readouterr().err


def test_the_card_opens_with_who_guesses_in_auto_mode():
    """The section's first sentence says whose guess "auto" inpainting uses, as the app's line does."""
    top1 = {w: {"mean": m} for w, m in (("0", 0.40), ("0.25", 0.5), ("0.5", 0.6), ("0.75", 0.67), ("1", 0.66))}
    base = {
        "date": "2026-12-06", "widths": [4, 8], "bytes": 2**20, "epochs": 2, "train_images": 42, "wall_s": 60,
        "threads": 1, "held_out_images": 6, "c_top1": {"whole": 0.5, "box25": 0.3},
        "guesser_top1": {"whole": 0.6, "box25": 0.4},
    }  # fmt: skip
    opening = {
        None: "asks a separate class guesser (",  # fitted before the share was measured: the guesser alone
        1.0: "asks a separate class guesser (",
        0.75: "asks C and a separate class guesser together (",
        0.0: "asks C: the separate class guesser fitted for it lost to C (",
    }
    for w, words in opening.items():
        rec = dict(base, mix=None) if w is None else dict(base, weight=w, mix={"top1": top1, "photos": 4})
        first = GS.card_section(rec).split("\n\n")[1]
        assert first.startswith("Inpainting without a chosen class " + words), (w, first[:120])
        assert ("w = 0.75" in first) == (w == 0.75)
