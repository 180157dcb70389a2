"""Enrolment of a new class from a few photos: the model stays untouched, the class file loads strictly,
bad inputs give clear errors, the CLI works, and (slow) a held-out class is learned well enough for C."""

import copy
import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cvaegan import CVAEGAN
from cvaegan.cli import main
from cvaegan.config import TrainConfig
from cvaegan.enrol import (
    DEFAULT_LAMBDAS,
    PAPER_LAMBDAS,
    EnrolError,
    add_classes,
    before_after,
    check_lambdas,
    enrol,
    load_classes,
    load_extra_classes,
    load_photos,
    photo_prior,
    photo_warnings,
    save_classes,
)
from cvaegan.errors import InputError
from cvaegan.hub import load_pretrained
from cvaegan.images import load_tensor
from cvaegan.inference import (
    classify,
    endpoint,
    generate,
    inpaint,
    interpolate,
    reconstruct,
    sample,
    swap,
)
from cvaegan.seeds import z_from_seeds
from cvaegan.serialization import WeightsError

from conftest import COLOURS, SHAPES, draw_shape, tiny_config

torch.set_num_threads(1)
STEPS = 4  # enough to exercise the loop; learning itself is checked by the slow test


def shape_photo(shape: int, colour: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """conftest's shape `shape` recoloured with colour `colour` (so shape and colour vary independently)."""
    img = np.asarray(draw_shape(shape, size, rng)).copy()
    img[(img == np.array(COLOURS[shape], np.uint8)).all(2)] = COLOURS[colour]
    return Image.fromarray(img)


def photo_folder(path, n: int, shape: int = 3, colour: int = 0, seed: int = 5):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape_photo(shape, colour, rng).save(path / f"{i}.png")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny untrained model saved as a weights folder (so config.json records its file hashes)."""
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config(class_names=["Circle 0", "Square 1", "Triangle 2", "Cross 3"])).eval()
    out = tmp_path_factory.mktemp("weights") / "w"
    model.save_pretrained(out, fp16=False)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos") / "star", 4)


@pytest.fixture(scope="module")
def enrolled(weights, photos):
    return enrol(CVAEGAN.from_pretrained(weights), photos, "Green Cross", steps=STEPS)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_enrol_leaves_the_model_alone_and_adds_a_usable_class(weights, photos, enrolled):
    model = CVAEGAN.from_pretrained(weights)
    before = _state(model)
    calls = []
    again = enrol(model, photos, "Green Cross", steps=STEPS, progress=lambda f, msg: calls.append((f, msg)))
    after = model.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_classes == 4
    assert calls[-1][0] == 1.0 and len(calls) == STEPS and "step" in calls[-1][1]
    for key in ("generator_embed", "encoder_embed", "classifier_weight"):  # same seed, same class
        assert torch.equal(getattr(again, key), getattr(enrolled, key))
    assert again.info["photos"] == 4 and again.info["init_from"] in model.config.class_names
    assert again.folder == "enrolled_green_cross" and again.base["files"] == {
        f: model.config.files[f] for f in ("encoder.safetensors", "generator.safetensors", "classifier.safetensors")
    }

    old = sample(model, "Square 1", [0, 1])
    assert add_classes(model, enrolled) == [4]
    cfg = model.config
    assert (
        cfg.num_classes == 5 and cfg.class_names[4] == "Green Cross" and cfg.class_folders[4] == "enrolled_green_cross"
    )
    assert model.classifier.out.weight.shape[0] == 5 and model.generator.embed.weight.shape[0] == 5
    assert torch.equal(sample(model, "Square 1", [0, 1]), old)  # existing classes render as before
    assert torch.equal(model.generator.embed.weight[4], enrolled.generator_embed)
    x = sample(model, "green cross", [0, 1, 2])  # names resolve case-insensitively, like every class
    assert x.shape == (3, 3, 32, 32) and x.abs().max() <= 1
    assert swap(model, torch.zeros(16), ["Circle 0", "Green Cross"]).shape == (2, 3, 32, 32)
    frames = interpolate(model, endpoint(model, "Circle 0", 1), endpoint(model, "Green Cross", 2), frames=3)
    assert torch.equal(frames[-1], sample(model, "Green Cross", [2])[0])
    photo = photos / "0.png"
    assert reconstruct(model, photo, "Green Cross")[1] == 4
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    assert inpaint(model, photo, mask, "Green Cross")["class"] == 4
    assert classify(model, x)[0].max() <= 4


def test_class_file_round_trip_and_from_pretrained(weights, enrolled, tmp_path):
    path = save_classes(enrolled, tmp_path / "green_cross.safetensors")
    assert path.stat().st_size < 4096  # a few rows, not a copy of the weights
    (loaded,) = load_classes(path)
    for key in ("generator_embed", "encoder_embed", "classifier_weight"):
        assert torch.equal(getattr(loaded, key), getattr(enrolled, key))
    assert loaded.classifier_bias == pytest.approx(enrolled.classifier_bias)
    assert (loaded.name, loaded.folder, loaded.info["steps"]) == ("Green Cross", "enrolled_green_cross", STEPS)

    a = CVAEGAN.from_pretrained(weights)
    add_classes(a, enrolled)
    b = load_pretrained(str(weights), extra_classes=[path])
    assert b.config.class_names == a.config.class_names
    assert torch.equal(sample(a, "Green Cross", [3, 4]), sample(b, "Green Cross", [3, 4]))
    # the released weights are untouched, and a second class stacks on the first
    assert json.loads((weights / "config.json").read_text())["num_classes"] == 4
    other = enrol(b, photo_folder(tmp_path / "p2", 3, shape=0, colour=2), "Blue Circle", steps=2)
    path2 = save_classes(other, tmp_path / "blue_circle.safetensors")
    c = load_pretrained(weights, extra_classes=[path, path2])
    assert c.config.class_names[4:] == ["Green Cross", "Blue Circle"]
    with pytest.raises(EnrolError, match="share a name"):
        load_pretrained(weights, extra_classes=[path, path])
    with pytest.raises(EnrolError, match="'Green Cross' already exists"):
        load_extra_classes(c, path)


def test_photo_prior_is_learned_saved_and_sampled(weights, photos, enrolled, tmp_path):
    # the Gaussian of the posteriors' mixture: mean of the means; variance = mean variance + variance of the means
    mu = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    mean, std = photo_prior(mu, torch.zeros(2, 2))
    assert torch.allclose(mean, torch.tensor([1.0, 2.0])) and torch.allclose(std, torch.tensor([2.0**0.5, 1.0]))
    z_dim = CVAEGAN.from_pretrained(weights).config.z_dim
    assert enrolled.z_mean.shape == enrolled.z_std.shape == (z_dim,) and (enrolled.z_std > 0).all()
    (loaded,) = load_classes(save_classes(enrolled, tmp_path / "c.safetensors"))
    assert torch.equal(loaded.z_mean, enrolled.z_mean) and torch.equal(loaded.z_std, enrolled.z_std)

    model = load_pretrained(weights, extra_classes=[tmp_path / "c.safetensors"])
    k = model.config.class_index("Green Cross")
    assert list(model.class_priors) == [k]
    seeds = [0, 1, 2]
    z = z_from_seeds(seeds, z_dim)
    near = sample(model, "Green Cross", seeds, prior="photos")
    assert torch.equal(near, generate(model, enrolled.z_mean + enrolled.z_std * z, torch.full((3,), k)))
    assert not torch.equal(near, sample(model, "Green Cross", seeds))  # the default stays N(0, I)
    # trained classes have no photo prior: "photos" leaves them on N(0, I), also in a mixed batch
    assert torch.equal(sample(model, "Square 1", seeds, prior="photos"), sample(model, "Square 1", seeds))
    mixed = sample(model, ["Square 1", "Green Cross"], [0, 1], prior="photos")
    assert torch.equal(mixed[1], near[1]) and torch.equal(mixed[0], sample(model, "Square 1", [0])[0])
    zk, kk = endpoint(model, "Green Cross", 2, prior="photos")
    assert kk == k and torch.equal(zk, enrolled.z_mean + enrolled.z_std * z[2])
    with pytest.raises(InputError, match="prior must be one of standard, photos"):
        sample(model, "Green Cross", seeds, prior="near")
    # class files written before the photo prior (no z_mean / z_std) still load, and sample on N(0, I)
    old = copy.copy(enrolled)
    old.z_mean = old.z_std = None
    path = save_classes(old, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == {"generator_embed", "encoder_embed", "classifier_weight", "classifier_bias"}
    m2 = load_pretrained(weights, extra_classes=[path])
    assert m2.class_priors == {} and torch.equal(
        sample(m2, "Green Cross", seeds, prior="photos"), sample(m2, "Green Cross", seeds)
    )
    # the check sheet gets a third row (the same seeds near the photos) only for a class with a prior
    x = load_photos(photos, 32)
    assert before_after(model, x, "Green Cross").height > before_after(m2, x, "Green Cross").height
    with pytest.raises(EnrolError, match="carry a photo prior and some do not"):
        save_classes(
            [enrolled, dataclasses.replace(old, name="Other", folder="enrolled_other")], tmp_path / "x.safetensors"
        )


def _rewrite(path, change_tensors=None, change_meta=None):
    with safe_open(str(path), framework="pt") as fh:
        keys = fh.keys()  # (a safetensors handle, not a dict)
        meta, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in keys}
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    save_file(tensors, str(path), metadata=meta)


def _meta_set(key, value):
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize(
    "case,match",
    [
        ("shape", "expected"),
        ("extra", "expected tensors"),
        ("value", "sha256"),
        ("name", "sha256"),
        ("nan", "NaN"),
        ("pickle", "pickle renamed"),
        ("truncated", "not a readable safetensors"),
        ("weights_file", "not a cvaegan class file"),
        ("future", "newer"),
        ("missing", "not found"),
        ("half_prior", "optionally"),
        ("prior_shape", "'z_mean' is"),
        ("prior_std", "'z_std' must be positive"),
        ("prior_value", "sha256"),
    ],
)
def test_class_file_is_loaded_strictly(weights, enrolled, tmp_path, case, match):
    path = save_classes(enrolled, tmp_path / "c.safetensors")
    if case == "shape":
        _rewrite(path, lambda t: t.__setitem__("generator_embed", torch.zeros(1, 9)))
    elif case == "extra":
        _rewrite(path, lambda t: t.__setitem__("surprise", torch.zeros(1)))
    elif case == "value":
        _rewrite(path, lambda t: t["encoder_embed"].add_(1e-3))
    elif case == "name":
        _rewrite(path, change_meta=_meta_set("names", json.dumps(["Someone Else"])))
    elif case == "nan":
        _rewrite(path, lambda t: t["classifier_bias"].fill_(float("nan")))
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"generator_embed": torch.zeros(1, 8)}))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif case == "weights_file":
        path = weights / "generator.safetensors"
    elif case == "future":
        _rewrite(path, change_meta=_meta_set("format_version", "99"))
    elif case == "half_prior":
        _rewrite(path, lambda t: t.pop("z_std"))
    elif case == "prior_shape":
        _rewrite(path, lambda t: t.__setitem__("z_mean", torch.zeros(1, 3)))
    elif case == "prior_std":
        _rewrite(path, lambda t: t["z_std"].mul_(-1))
    elif case == "prior_value":
        _rewrite(path, lambda t: t["z_mean"].add_(1e-3))
    else:
        path = tmp_path / "nothing.safetensors"
    with pytest.raises(EnrolError, match=match):
        load_classes(path, CVAEGAN.from_pretrained(weights))


def test_class_file_for_other_weights_is_refused(weights, enrolled, tmp_path):
    path = save_classes(enrolled, tmp_path / "c.safetensors")
    torch.manual_seed(1)
    other = CVAEGAN(tiny_config(class_names=["A", "B", "C", "D"])).eval()
    other.save_pretrained(tmp_path / "other", fp16=False)
    with pytest.raises(EnrolError, match="made for other weights"):
        load_pretrained(tmp_path / "other", extra_classes=path)
    wider = CVAEGAN(tiny_config(label_dim=12)).eval()
    wider.save_pretrained(tmp_path / "wider", fp16=False)
    with pytest.raises(EnrolError, match="label_dim 8, these have 12"):
        load_classes(path, CVAEGAN.from_pretrained(tmp_path / "wider"))
    # the digest covers the base identity: editing it in the file to pass the check is caught
    _rewrite(path, change_meta=_meta_set("base", json.dumps({**enrolled.base, "files": other.config.files})))
    with pytest.raises(EnrolError, match="sha256"):
        load_classes(path)


@pytest.mark.parametrize("g_cond", ["concat", "cbn"])
def test_in_memory_model_can_enrol_but_not_save(tmp_path, photos, g_cond):
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config(g_cond=g_cond)).eval()
    cls = enrol(model, photos, "Thing", steps=2, init_from=2)
    with torch.no_grad():  # the learned row drives G whichever way G takes the class
        z = torch.randn(2, model.config.z_dim)
        before = model.generator(z, torch.tensor([2, 2]))
    assert cls.info["init_from"] == "2"
    add_classes(model, cls)
    assert model.config.class_names[-1] == "Thing"
    with torch.no_grad():
        thing = model.generator(z, torch.tensor([4, 4]))
        assert torch.isfinite(thing).all() and not torch.allclose(thing, before)
    with pytest.raises(EnrolError, match="save_pretrained"):
        save_classes(cls, tmp_path / "thing.safetensors")


@pytest.fixture(scope="module")
def cbn_weights(tmp_path_factory):
    """A tiny untrained model with class-conditional BatchNorm in G, whose class maps are not zero (as after
    training), saved as a weights folder."""
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config(class_names=["Circle 0", "Square 1", "Triangle 2", "Cross 3"], g_cond="cbn")).eval()
    with torch.no_grad():
        for name, p in model.generator.named_parameters():
            if ".gain." in name or ".bias." in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("cbn") / "w"
    model.save_pretrained(out, fp16=False)
    return out


def test_enrolled_class_gets_its_own_terms_in_gs_class_batchnorms(cbn_weights, photos, tmp_path):
    model = CVAEGAN.from_pretrained(cbn_weights)
    size = model.generator.offset_size()
    assert size == sum(model.generator.offset_sizes()) > 0
    cls = enrol(model, photos, "Green Cross", steps=STEPS)
    assert cls.generator_offsets.shape == (size,) and cls.generator_offsets.abs().sum() > 0
    assert cls.info["layer_lr"] == pytest.approx(0.03)
    plain = enrol(model, photos, "Green Cross", steps=STEPS, layer_lr=0)  # the embedding rows only
    assert plain.generator_offsets is None and plain.info["layer_lr"] == 0
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(EnrolError, match="layer_lr must be 0 or positive"):
            enrol(model, photos, "Green Cross", steps=1, layer_lr=bad)

    seeds = [0, 1, 2]
    old = sample(model, ["Square 1", "Cross 3"], seeds[:2])
    assert model.generator.class_offsets is None  # released weights carry no table
    (k,) = add_classes(model, cls)
    g = model.generator
    assert g.class_offsets.shape == (5, size) and not g.class_offsets[:4].any()
    assert torch.equal(g.class_offsets[4], cls.generator_offsets)
    assert "class_offsets" not in g.state_dict()  # never saved with the weights
    with pytest.raises(WeightsError, match="save those classes with cvaegan.enrol.save_classes"):
        model.save_pretrained(tmp_path / "grown")  # saving would silently drop the terms
    assert not (tmp_path / "grown").exists()
    assert torch.equal(sample(model, ["Square 1", "Cross 3"], seeds[:2]), old)  # trained classes as before
    with_terms = sample(model, "Green Cross", seeds)
    table = g.class_offsets
    g.class_offsets = None
    without = sample(model, "Green Cross", seeds)
    g.class_offsets = table
    assert not torch.allclose(with_terms, without)  # the terms reach G's output
    # a soft label mixes the terms like the embeddings: the end frame of a morph is the enrolled class's sample
    frames = interpolate(model, endpoint(model, "Circle 0", 1), endpoint(model, "Green Cross", 2), frames=3)
    assert torch.equal(frames[-1], with_terms[2])

    # the class file carries them (format 2); loading reproduces the samples; a class enrolled on top keeps them
    path = save_classes(cls, tmp_path / "gc.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["format_version"] == "2" and fh.get_tensor("generator_offsets").shape == (1, size)
    loaded = load_pretrained(cbn_weights, extra_classes=[path])
    assert torch.equal(sample(loaded, "Green Cross", seeds), with_terms)
    second = enrol(loaded, photo_folder(tmp_path / "p2", 3, shape=0, colour=2), "Blue Circle", steps=2)
    add_classes(loaded, second)
    assert loaded.generator.class_offsets.shape == (6, size)
    assert torch.equal(sample(loaded, "Green Cross", seeds), with_terms)
    # a file without them (layer_lr 0, or written before format 2) loads beside one with them: zero terms
    path0 = save_classes(dataclasses.replace(plain, name="Plain", folder="enrolled_plain"), tmp_path / "p.safetensors")
    both = load_pretrained(cbn_weights, extra_classes=[path, path0])
    assert not both.generator.class_offsets[5].any() and torch.equal(sample(both, "Green Cross", seeds), with_terms)
    # both in one file: the one without gets a zero row
    (a, b) = load_classes(save_classes([cls, dataclasses.replace(plain, name="P")], tmp_path / "two.safetensors"))
    assert torch.equal(a.generator_offsets, cls.generator_offsets) and not b.generator_offsets.any()


def test_enrolment_runs_in_channels_last_on_cpu_with_the_same_result(cbn_weights, photos, monkeypatch):
    """A speed choice only (speed.use_channels_last): the private copy's convolutions run in channels_last on the
    CPU, the served model keeps its layout, and the class learned is the contiguous one's to float rounding."""
    from cvaegan import speed

    model = CVAEGAN.from_pretrained(cbn_weights)
    conv = next(m for m in model.generator.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []  # deepcopy copies the hook, so it reports the private copy's layout
    conv.register_forward_hook(
        lambda m, args, out: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last))
    )
    fast = enrol(model, photos, "Green Cross", steps=STEPS)
    assert seen and all(seen) and conv.weight.is_contiguous()  # (a 3x3 conv's weight is not both)
    seen.clear()
    monkeypatch.setattr(speed, "CPU_CHANNELS_LAST", False)
    plain = enrol(model, photos, "Green Cross", steps=STEPS)
    assert seen and not any(seen)
    for a, b in [
        (fast.generator_embed, plain.generator_embed),
        (fast.encoder_embed, plain.encoder_embed),
        (fast.generator_offsets, plain.generator_offsets),
        (fast.classifier_weight, plain.classifier_weight),
        (fast.z_mean, plain.z_mean),
    ]:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "case,match",
    [
        ("length", "per-layer generator terms"),
        ("nan", "NaN"),
        ("value", "sha256"),
        ("concat_weights", "per-layer generator terms"),
    ],
)
def test_generator_terms_in_a_class_file_are_checked(cbn_weights, weights, photos, tmp_path, case, match):
    cls = enrol(CVAEGAN.from_pretrained(cbn_weights), photos, "Green Cross", steps=2)
    path = save_classes(cls, tmp_path / "c.safetensors")
    target = cbn_weights
    if case == "length":  # a consistent file (digest rewritten) made for a G with other channel counts
        short = dataclasses.replace(cls, generator_offsets=cls.generator_offsets[:-2])
        path = save_classes(short, tmp_path / "c.safetensors")
    elif case == "nan":
        _rewrite(path, lambda t: t["generator_offsets"].fill_(float("nan")))
    elif case == "value":
        _rewrite(path, lambda t: t["generator_offsets"].add_(1e-3))
    else:  # terms for class BatchNorms offered to weights whose G has none (checked before the file hashes)
        target = weights
    with pytest.raises(EnrolError, match=match):
        load_classes(path, CVAEGAN.from_pretrained(target))


@pytest.mark.parametrize(
    "name,match",
    [
        ("Square 1", "already exists"),
        ("square 1", "already exists"),
        ("   ", "give the new class a name"),
        ("42", "all digits"),
        ("x" * 81, "at most 80"),
    ],
)
def test_bad_names(weights, photos, name, match):
    with pytest.raises(EnrolError, match=match):
        enrol(CVAEGAN.from_pretrained(weights), photos, name, steps=1)


def test_bad_photos(tmp_path):
    ok = photo_folder(tmp_path / "ok", 3)
    with pytest.raises(EnrolError, match="at least 3"):
        load_photos([ok / "0.png", ok / "1.png"], 32)
    with pytest.raises(EnrolError, match="at least 3"):
        load_photos(photo_folder(tmp_path / "two", 2), 32)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a photo")
    with pytest.raises(EnrolError, match="no image files.*subfolders"):
        load_photos(empty, 32)
    with pytest.raises(EnrolError, match="no such file or folder"):
        load_photos(tmp_path / "missing", 32)
    broken = photo_folder(tmp_path / "broken", 3)
    (broken / "3.jpg").write_bytes(b"<html>not a jpeg</html>")
    with pytest.raises(EnrolError, match=r"3\.jpg.*not an image.*replace or remove"):
        load_photos(broken, 32)
    (broken / "3.jpg").write_bytes(b"")
    with pytest.raises(EnrolError, match="empty"):
        load_photos(broken, 32)
    with pytest.raises(EnrolError, match="photos 1 and 3 are the same picture"):
        load_photos([ok / "0.png", ok / "1.png", ok / "0.png"], 32)
    with pytest.raises(EnrolError, match="at most 50"):
        load_photos([ok / "0.png"] * 51, 32)
    # any size and mode is accepted, like everywhere else; errors are the project's input errors
    odd = [Image.new("L", (50, 20), 90), Image.new("RGBA", (33, 70), (255, 0, 0, 128)), np.zeros((8, 9), np.uint8)]
    x = load_photos(odd, 32)
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert issubclass(EnrolError, InputError)


def test_photo_warnings(enrolled):
    assert enrolled.warnings == []  # 40 x 40 photos for a 32 px model: nothing to say
    w = photo_warnings([(64, 64), (120, 60), (20, 24)], 32)
    assert len(w) == 2
    assert w[0].startswith("photo 2 is 120x60: the centre crop to a square cuts off 50%") and "img_align_celeba" in w[0]
    assert w[1].startswith("photo 3 is 20x24, smaller than the model's 32x32")


def test_cli_enrol_end_to_end(weights, photos, tmp_path, capsys):
    out = tmp_path / "star.safetensors"
    sheet = tmp_path / "sheet.png"
    assert (
        main(
            [
                "enrol",
                "--weights",
                str(weights),
                "--images",
                str(photos),
                "--name",
                "Star",
                "--out",
                str(out),
                "--steps",
                "3",
                "--preview",
                str(sheet),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = capsys.readouterr()
    assert "Star" in text.out and str(out) in text.out and "3/3" in text.err  # summary; tqdm bar on stderr
    assert load_classes(out, CVAEGAN.from_pretrained(weights))[0].name == "Star"
    assert Image.open(sheet).size[0] > 4 * 32
    files = [str(photos / f"{i}.png") for i in range(3)]
    assert (
        main(
            [
                "enrol",
                "--weights",
                str(weights),
                "--images",
                *files,
                "--name",
                "Star 2",
                "--out",
                str(tmp_path / "s2.safetensors"),
                "--steps",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "enrol",
                "--weights",
                str(weights),
                "--images",
                *files[:2],
                "--name",
                "Star 3",
                "--out",
                str(tmp_path / "s3.safetensors"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: got 2 photo(s)") and "Traceback" not in err
    assert (
        main(
            [
                "enrol",
                "--weights",
                str(weights),
                "--images",
                str(photos),
                "--name",
                "Circle 0",
                "--out",
                str(tmp_path / "s4.safetensors"),
            ]
        )
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    args = ["enrol", "--weights", str(weights), "--images", str(photos), "--name", "S5", "--out", str(out)]
    assert main([*args, "--layer-lr", "-1"]) == 1
    assert "--layer-lr must be 0 or positive" in capsys.readouterr().err
    assert main([*args, "--layer-lr", "inf"]) == 1  # not finite: refused before the weights load, like -1
    assert "--layer-lr must be 0 or positive, got inf" in capsys.readouterr().err


def test_loss_weights_are_checked_recorded_and_used(weights, photos, enrolled, tmp_path, capsys):
    assert check_lambdas("3, 1, 0.001, 10") == (3.0, 1.0, 0.001, 10.0) == check_lambdas(DEFAULT_LAMBDAS)
    assert PAPER_LAMBDAS == (3.0, 1.0, 1e-3, 1e-3)  # the paper's training weights, for reproducing the old default
    for bad, match in [
        ("3,1,1", "4 finite numbers"),
        ("3,1,x,1", "4 numbers like"),
        ((3, 1, -1, 1), ">= 0"),
        ((3, 0, 1, 1), "reconstruction weight"),
        ((3, 1, float("nan"), 1), "finite"),
    ]:
        with pytest.raises(EnrolError, match=match):
            check_lambdas(bad)
    assert enrolled.info["lambdas"] == list(DEFAULT_LAMBDAS)
    # the paper's light identity term (l4 = 1e-3) learns a different class from the same photos and seed
    paper = enrol(CVAEGAN.from_pretrained(weights), photos, "Green Cross", steps=STEPS, lambdas=PAPER_LAMBDAS)
    assert paper.info["lambdas"] == [3.0, 1.0, 1e-3, 1e-3]
    assert not torch.equal(paper.generator_embed, enrolled.generator_embed)
    with pytest.raises(EnrolError, match="4 finite numbers"):
        enrol(CVAEGAN.from_pretrained(weights), photos, "Green Cross", steps=1, lambdas=(1, 1))
    argv = ["enrol", "--weights", str(weights), "--images", str(photos), "--name", "Star"]
    assert main([*argv, "--out", str(tmp_path / "s.safetensors"), "--lambdas", "3,1"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: loss weights must be 4" in err and "Traceback" not in err and not (tmp_path / "s.safetensors").exists()
    )
    assert main([*argv, "--out", str(tmp_path / "t.safetensors"), "--lambdas", "3,1,0.001,2", "--steps", "1"]) == 0
    assert load_classes(tmp_path / "t.safetensors")[0].info["lambdas"] == [3.0, 1.0, 0.001, 2.0]


# ------------------------------------------------------------------ slow: does it learn a held-out class?
# Classes are (shape colour, background tint) pairs on shapes of any kind. The model is trained on 8 of the
# 9 pairs and enrols the 9th: both its colour and its tint were seen, never together, as a new face combines
# traits the model knows. (A new shape in a new colour is beyond what a tiny model's G can draw from an
# embedding: it renders blobs of the colours it was trained on.)

TINTS = [(0, 0, 0), (0, 70, 110), (120, 80, 0)]  # added to the background noise
HELD_OUT = (2, 1)  # a blue shape on a teal background
COMBO_STEPS = 150


def tinted_photo(colour: int, tint: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    kind = int(rng.integers(len(SHAPES)))
    img = np.asarray(draw_shape(kind, size, rng)).astype(np.int16)
    fg = (img == np.array(COLOURS[kind])).all(2)
    img[~fg] += np.array(TINTS[tint], np.int16)
    img[fg] = COLOURS[colour]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def combos_model(tmp_path_factory):
    """A tiny model (with D) trained on the 8 pairs other than HELD_OUT, 12 photos each."""
    from cvaegan.data import load_images
    from cvaegan.train import train

    root = tmp_path_factory.mktemp("combos")
    rng = np.random.default_rng(0)
    for colour in range(3):
        for tint in range(3):
            if (colour, tint) != HELD_OUT:
                d = root / "data" / f"c{colour}_t{tint}"
                d.mkdir(parents=True)
                for i in range(12):
                    tinted_photo(colour, tint, rng).save(d / f"{i}.png")
    data = load_images(root / "data", 32, progress=False)
    tcfg = TrainConfig(
        steps=COMBO_STEPS,
        batch_size=16,
        lr=1e-3,
        log_every=50,
        sample_every=0,
        checkpoint_every=COMBO_STEPS,
        device="cpu",
        export_discriminator=True,
    )
    return train(
        data, root / "run", tcfg, tiny_config(num_classes=8, z_dim=16, base_channels=8, max_channels=32), progress=False
    )


def colour_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1] -> mean colour of the brightest quarter (the shape) and of the darkest half."""
    flat = x.flatten(2)
    lum = flat.mean(1)
    p = lum.shape[1]
    fg = flat.gather(2, lum.topk(p // 4, 1).indices[:, None].expand(-1, 3, -1)).mean(2)
    bg = flat.gather(2, lum.topk(p // 2, 1, largest=False).indices[:, None].expand(-1, 3, -1)).mean(2)
    return torch.cat([fg, bg], 1)


def colour_judge(rng: np.random.Generator):
    """An independent judge that knows all 9 pairs, the held-out one included (like the issue's judge, trained
    on real photos of every identity): the nearest class centroid of colour_features over 16 real photos."""
    pairs = [(c, t) for c in range(3) for t in range(3)]
    cents = torch.stack(
        [
            colour_features(torch.stack([load_tensor(tinted_photo(c, t, rng), 32) for _ in range(16)])).mean(0)
            for c, t in pairs
        ]
    )
    return lambda x: [pairs[i] for i in torch.cdist(colour_features(x), cents).argmin(1).tolist()]


def judge_top1(judge, x: torch.Tensor, pair: tuple[int, int]) -> float:
    return sum(p == pair for p in judge(x)) / len(x)


@pytest.mark.slow
def test_enrolled_held_out_class_is_learned(combos_model, tmp_path):
    model = CVAEGAN.from_pretrained(combos_model, with_discriminator=True)
    rng = np.random.default_rng(11)
    cls = enrol(model, [tinted_photo(*HELD_OUT, rng) for _ in range(5)], "Blue on teal")
    assert cls.info["discriminator"] and cls.info["recon_psnr_db_after"] > cls.info["recon_psnr_db_before"] + 1
    model = load_pretrained(combos_model, extra_classes=save_classes(cls, tmp_path / "c.safetensors"))
    new = model.config.class_index("Blue on teal")
    x = sample(model, new, list(range(100, 164)), batch_size=64)
    share = (classify(model, x)[0] == new).float().mean().item()
    assert share >= 0.5, f"C gives {share:.0%} of the enrolled class's samples to it (chance {1 / 9:.0%})"
    # the independent judge recognises the samples as the held-out pair: at least half as often as it
    # recognises samples of the trained pairs (the target for faces), and far more often than the
    # nearest trained class, un-enrolled (the baseline)
    judge = colour_judge(rng)
    seeds = list(range(200, 216))
    trained = np.mean(
        [
            judge_top1(judge, sample(model, k, seeds, batch_size=16), (int(f[1]), int(f[4])))
            for k, f in enumerate(model.config.class_folders[:8])
        ]
    )
    enrolled = judge_top1(judge, x, HELD_OUT)
    baseline = judge_top1(judge, sample(model, cls.info["init_from"], list(range(100, 164)), batch_size=64), HELD_OUT)
    assert enrolled >= 0.5 * trained and enrolled >= baseline + 0.3, (enrolled, trained, baseline)
    # the new row does not take over real photos of the classes the model was trained on
    for name in model.config.class_folders[:8]:
        colour, tint = int(name[1]), int(name[4])
        real = torch.stack([load_tensor(tinted_photo(colour, tint, rng), 32) for _ in range(16)])
        stolen = (classify(model, real)[0] == new).float().mean().item()
        assert stolen <= 0.25, f"the new class takes {stolen:.0%} of real {name} photos"


def test_every_entry_point_enrols_with_the_same_default_steps():
    """The API, the command line, the experiment and the app share one default step count (README: 400 since the
    faces weights of release v8 left a class learned in 200 steps behind)."""
    import argparse
    import inspect

    from cvaegan import cli, enrol_eval, experiments, service
    from cvaegan.enrol import DEFAULT_STEPS, enrol

    assert DEFAULT_STEPS == 400
    assert inspect.signature(enrol).parameters["steps"].default == DEFAULT_STEPS
    assert inspect.signature(enrol_eval.run_enrolment).parameters["steps"].default == DEFAULT_STEPS
    assert service.ENROL_STEPS == DEFAULT_STEPS
    args = cli._parser().parse_args(["enrol", "--images", "a.jpg", "--name", "Ada", "--out", "ada.safetensors"])
    assert args.steps == DEFAULT_STEPS
    ap = argparse.ArgumentParser()
    experiments._enrolment_parser(ap.add_subparsers(dest="experiment"))
    args = ap.parse_args(["enrolment", "--weights", "w", "--data", "d", "--judge", "j", "--out", "o"])
    assert args.steps == DEFAULT_STEPS
