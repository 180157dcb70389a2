"""The demo's "Add your own" panel: service.enrol_class on a tiny untrained model, and the /enrol endpoint over
HTTP with gradio_client (few learning steps: this checks the wiring, test_enrol.py checks the learning)."""

import numpy as np
import pytest
import torch
from PIL import Image

from cvaegan import CVAEGAN, service as S
from cvaegan.enrol import EnrolError
from cvaegan.inference import sample

from appserver import launch_app
from conftest import draw_shape, tiny_config

torch.set_num_threads(1)
STEPS = 5


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny untrained model saved as a weights folder (config.json records its file hashes)."""
    torch.manual_seed(0)
    model = CVAEGAN(tiny_config(class_names=["Circle 0", "Square 1", "Triangle 2", "Cross 3"])).eval()
    out = tmp_path_factory.mktemp("weights") / "w"
    model.save_pretrained(out, fp16=False)
    return out


def photo_files(folder, n: int, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        draw_shape(3, 40, rng).save(p)
        paths.append(str(p))
    return paths


def test_enrol_class_adds_a_sampleable_class_with_thumbnail(weights, tmp_path):
    loaded = S.ModelRegistry(str(weights), device="cpu").get(str(weights))
    k = loaded.model.config.num_classes
    seen = []
    files = photo_files(tmp_path / "p", 3)
    # uploads arrive as paths or (path, caption) pairs
    name, sheet, text = S.enrol_class(
        loaded,
        [files[0], (files[1], None), files[2]],
        "  Green  Cross ",
        progress=lambda f, d: seen.append((f, d)),
        steps=STEPS,
    )
    m = loaded.model
    assert name == "Green Cross" and m.config.class_names[-1] == name and m.config.num_classes == k + 1
    assert len(loaded.thumbnails) == k + 1 and loaded.thumbnails[-1].size == (32, 32)
    assert [c.name for c in loaded.enrolled] == [name]
    assert isinstance(sheet, Image.Image) and "Green Cross" in text
    assert seen and all(0 <= f <= 1 for f, _ in seen) and any("step" in d for _, d in seen)
    x = sample(m, name, [0, 1])
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert name in [v for _, v in S.class_choices(m)]
    images, _ = S.generate(m, name, 0, False, 2, 1.0)  # the service's other requests take the new name
    assert len(images) == 2


def test_enrol_class_errors_are_clear(weights, tmp_path):
    model = CVAEGAN.from_pretrained(weights)
    files = photo_files(tmp_path / "p", 3)
    with pytest.raises(EnrolError, match="at least 3"):
        S.enrol_class(model, files[:2], "Two Photos", steps=STEPS)
    with pytest.raises(EnrolError, match="already exists"):
        S.enrol_class(model, files, "square 1", steps=STEPS)
    with pytest.raises(EnrolError, match="name"):
        S.enrol_class(model, files, "   ", steps=STEPS)
    with pytest.raises(EnrolError, match="at least 3"):
        S.enrol_class(model, None, "Nothing", steps=STEPS)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(EnrolError, match="broken.png"):
        S.enrol_class(model, [*files[:2], str(broken)], "Broken", steps=STEPS)
    assert model.config.num_classes == 4  # nothing was added
    S.enrol_class(model, files, "Once", steps=STEPS)
    with pytest.raises(EnrolError, match="already exists"):
        S.enrol_class(model, files, "ONCE", steps=STEPS)


def test_the_app_enrols_with_d_s_features_like_the_cli(weights, tmp_path, monkeypatch):
    """Served models load without D; "Add your own" borrows D from the weights folder, so the class it learns is the
    one `cvaegan enrol` (which loads D) learns. Without D, or with a broken D file, it enrols without and says so."""
    from cvaegan.enrol import enrol
    from cvaegan.hub import load_pretrained

    with_d = tmp_path / "with_d"
    torch.manual_seed(1)
    CVAEGAN(tiny_config(class_names=["Circle 0", "Square 1", "Triangle 2", "Cross 3"])).eval().save_pretrained(
        with_d, fp16=False, include_discriminator=True
    )
    files = photo_files(tmp_path / "p", 3)
    loaded = S.ModelRegistry(str(with_d), device="cpu").get(str(with_d))
    assert loaded.model.discriminator is None  # the served model stays without D
    _, _, text = S.enrol_class(loaded, files, "Green Cross", steps=STEPS)
    assert loaded.model.discriminator is None and "D's features" not in text
    ours = loaded.enrolled[0]
    cli = enrol(load_pretrained(with_d, with_discriminator=True), files, "Green Cross", steps=STEPS)
    no_d = enrol(load_pretrained(with_d), files, "Green Cross", steps=STEPS)
    assert ours.info["discriminator"] and cli.info["discriminator"] and not no_d.info["discriminator"]
    assert torch.equal(ours.generator_embed, cli.generator_embed) and torch.equal(ours.encoder_embed, cli.encoder_embed)
    assert not torch.equal(ours.generator_embed, no_d.generator_embed)  # D's features change what is learned
    assert loaded.discriminator()[0] is loaded.discriminator()[0]  # loaded once, kept for the next enrolment
    monkeypatch.chdir(with_d)  # a model built in memory has no folder: the working directory's D is not taken
    assert CVAEGAN(tiny_config(), with_discriminator=False).load_discriminator() is None

    _, _, text = S.enrol_class(S.ModelRegistry(str(weights), device="cpu").get(str(weights)), files, "A", steps=STEPS)
    assert "carry no discriminator" in text  # the module's weights were saved without D

    fresh = S.ModelRegistry(str(with_d), device="cpu").get(str(with_d))  # (loading checks every file's sha256)
    (with_d / "discriminator.safetensors").write_bytes(b"broken")  # replaced on disk while the app serves
    _, _, text = S.enrol_class(fresh, files, "B", steps=STEPS)
    assert "D's features were not used" in text and "sha256" in text and not fresh.enrolled[0].info["discriminator"]


def test_enrol_endpoint_over_http(weights, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    monkeypatch.setattr(S, "ENROL_STEPS", STEPS)
    app, url = launch_app(str(weights))
    client = Client(url, verbose=False)
    try:
        w = str(weights)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert len(api["/enrol"]["parameters"]) == 3 and len(api["/enrol"]["returns"]) == 3
        assert all(fn.api_name for fn in app.demo.fns.values())
        files = [handle_file(p) for p in photo_files(tmp_path / "p", 3)]
        name, sheet, text = client.predict(w, files, "Green Cross", api_name="/enrol")
        assert name == "Green Cross" and "Green Cross" in text and Image.open(sheet).width > 32
        assert app.registry.get(w).model.config.class_names[-1] == "Green Cross"
        after = {f.api_name: f.fn for f in app.demo.fns.values()}["enrol_pickers"](
            w, name, "Circle 0", "Circle 0", "Square 1", S.AUTO, S.AUTO, S.AUTO
        )
        assert after[0]["value"] == name and after[1]["value"] == "Circle 0" and after[5]["value"] == S.AUTO
        assert all(name in [v for _, v in d["choices"]] for d in after[:7])
        assert len(after[-1]) == 5  # a thumbnail for the new class too
        with pytest.raises(Exception, match="already exists"):
            client.predict(w, files, "green cross", api_name="/enrol")
        with pytest.raises(Exception, match="at least 3"):
            client.predict(w, files[:2], "Two", api_name="/enrol")
        # the new class through the other endpoints
        gallery, _, _ = client.predict(w, "Green Cross", 0, False, 2, 1.0, api_name="/generate")
        assert len(gallery) == 2
        # "near the photos" draws the added class's z around its photos' codes; a trained class is unaffected
        near, _, _ = client.predict(w, "Green Cross", 0, False, 2, 1.0, True, api_name="/generate")
        pixels = [np.asarray(Image.open(g["image"])) for g in (*gallery, *near)]
        assert not np.array_equal(pixels[0], pixels[2]) and not np.array_equal(pixels[1], pixels[3])
        a, _, _ = client.predict(w, "Circle 0", 0, False, 1, 1.0, True, api_name="/generate")
        b, _, _ = client.predict(w, "Circle 0", 0, False, 1, 1.0, False, api_name="/generate")
        assert np.array_equal(np.asarray(Image.open(a[0]["image"])), np.asarray(Image.open(b[0]["image"])))
        # the same in Interpolate: the added class's endpoint moves near its photos, a trained one stays
        ends = ("Green Cross", 0, None, "Circle 0", 1, None, "both", 2)
        plain, _ = client.predict(w, *ends, api_name="/interpolate")
        close, _ = client.predict(w, *ends, True, api_name="/interpolate")
        frames = [np.asarray(Image.open(g["image"])) for g in (*plain, *close)]
        assert not np.array_equal(frames[0], frames[2]) and np.array_equal(frames[1], frames[3])
    finally:
        app.demo.close()
        client.close() if hasattr(client, "close") else None
