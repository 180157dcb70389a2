"""app.py through its HTTP API: every public api_name called with gradio_client on 127.0.0.1."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvaegan.service import AUTO

from appserver import launch_app
from conftest import draw_shape


@pytest.fixture(scope="module")
def served(trained_with_directions, tmp_path_factory):
    trained_export = trained_with_directions
    app, url = launch_app(str(trained_export))
    from gradio_client import Client

    client = Client(url, verbose=False)
    yield app, client, str(trained_export), tmp_path_factory.mktemp("files")
    app.demo.close()
    client.close() if hasattr(client, "close") else None


def test_app_is_thin_and_every_event_named(served):
    app, client, _, _ = served
    for fn in app.demo.fns.values():
        assert fn.api_name, f"event {fn.name} has no api_name"
    import ast

    tree = ast.parse(open(app.__file__).read())
    assert not any(isinstance(n, ast.ClassDef) for n in ast.walk(tree))  # no networks defined in the UI
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not imported & {"torch", "nn"}
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    # the endpoints of the first release keep their parameters and number of results (gradio_client users)
    kept = {
        "/select_model": (1, 27),
        "/init_sliders": (0, 16),
        "/generate": (7, 3),  # 6 + "near the photos" (defaulted: 6-argument calls still work, see below)
        "/send_to_inpaint": (0, 1),
        "/explore": (20, 1),
        "/reset_sliders": (1, 16),
        "/explore_after_reset": (20, 1),
        "/swap": (3, 1),
        "/interpolate": (10, 2),  # 9 + "near the photos" (defaulted, as for /generate)
        "/inpaint": (5, 2),
        "/enhance": (4, 2),
        "/reconstruct": (4, 2),  # 3 + refinement steps (defaulted: 3-argument calls still work)
    }
    for name, (n_in, n_out) in kept.items():
        assert name in api, name
        assert (len(api[name]["parameters"]), len(api[name]["returns"])) == (n_in, n_out), name
    assert "/explore_view" in api and len(api["/explore_view"]["parameters"]) == 21
    for name, i in (("/generate", 6), ("/interpolate", 9)):
        near = api[name]["parameters"][i]
        assert near["parameter_has_default"] and near["parameter_default"] is False, name
    refine = api["/reconstruct"]["parameters"][3]
    assert refine["parameter_has_default"] and refine["parameter_default"] == 0


def test_generate_over_http_is_seeded(served):
    _, client, w, _ = served
    gallery, text, seed = client.predict(w, "Square 1", 7, False, 2, 1.0, api_name="/generate")
    assert seed == 7 and "7" in text and [g["caption"] for g in gallery] == ["seed 7", "seed 8"]
    again, _, _ = client.predict(w, "Square 1", 8, False, 1, 1.0, api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(gallery[1]["image"])), np.asarray(Image.open(again[0]["image"])))


def test_bad_input_gives_a_clear_error_not_a_dead_worker(served):
    _, client, w, _ = served
    with pytest.raises(Exception, match="Nope"):  # refused by the dropdown or by our check
        client.predict(w, "Nope", 1, False, 1, 1.0, api_name="/generate")
    with pytest.raises(Exception, match="maximum|truncation"):
        client.predict(w, "Square 1", 1, False, 1, 5.0, api_name="/generate")
    gallery, _, _ = client.predict(w, "Square 1", 1, False, 1, 1.0, api_name="/generate")
    assert len(gallery) == 1  # the worker still serves


def test_explore_swap_and_model_events(served):
    _, client, w, _ = served
    sliders = [0.0] * 16
    img = client.predict(w, "Circle 0", 3, 1.0, *sliders, api_name="/explore")
    assert Image.open(img).size == (32, 32)
    grid = client.predict(w, 3, 1.0, api_name="/swap")
    assert [g["caption"] for g in grid] == ["Circle 0", "Square 1", "Triangle 2", "Cross 3"]
    out = client.predict(w, api_name="/select_model")
    assert "Showing" in out[0]
    assert len(client.predict(w, api_name="/reset_sliders")) == 16


def test_interpolate_with_upload(served):
    from gradio_client import handle_file

    _, client, w, tmp = served
    photo = tmp / "photo.png"
    draw_shape(2, 48, np.random.default_rng(0)).save(photo)
    frames, gif = client.predict(
        w, "Circle 0", 1, None, AUTO, 0, handle_file(str(photo)), "both", 4, api_name="/interpolate"
    )
    assert len(frames) == 4 and Image.open(gif).format == "GIF"


def test_inpaint_with_image_editor_payload(served):
    from gradio_client import handle_file

    _, client, w, tmp = served
    photo = np.asarray(draw_shape(0, 40, np.random.default_rng(1)))
    Image.fromarray(photo).save(tmp / "bg.png")
    layer = np.zeros((40, 40, 4), np.uint8)
    layer[8:20, 8:30] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp / "layer.png")
    value = {
        "background": handle_file(str(tmp / "bg.png")),
        "layers": [handle_file(str(tmp / "layer.png"))],
        "composite": None,
        "id": None,
    }
    (before, after), text = client.predict(w, value, AUTO, 2, 0, api_name="/inpaint")
    out = np.asarray(Image.open(after).convert("RGB"))
    mask = layer[:, :, 3] > 0
    assert np.array_equal(out[~mask], photo[~mask]) and (out[mask] != photo[mask]).any()
    assert "Class used" in text


def test_enhance_and_reconstruct_over_http(served):
    from gradio_client import handle_file

    _, client, w, tmp = served
    draw_shape(3, 12, np.random.default_rng(2)).save(tmp / "small.png")
    img, info = client.predict(w, handle_file(str(tmp / "small.png")), AUTO, 10, api_name="/enhance")
    assert Image.open(img).size == (32, 32) and "PSNR" in info
    img, info = client.predict(w, handle_file(str(tmp / "small.png")), "Cross 3", api_name="/reconstruct")
    assert Image.open(img).size == (32, 32) and "Cross 3" in info and "PSNR" in info
    plain = float(info.rsplit("PSNR ", 1)[1].split()[0])
    _, info = client.predict(w, handle_file(str(tmp / "small.png")), "Cross 3", 30, api_name="/reconstruct")
    assert float(info.rsplit("PSNR ", 1)[1].split()[0]) > plain


def test_truncation_sliders_start_at_the_measured_default(served):
    from cvaegan import service as S

    app = served[0]
    sliders = [b for b in app.demo.blocks.values() if str(getattr(b, "label", "")).startswith("Truncation")]
    assert len(sliders) == 2  # Generate and Explore
    assert all(b.value == S.DEFAULT_TRUNCATION == 0.7 for b in sliders)


def test_image_results_reach_gradio_as_files_of_our_own(served):
    """The handlers behind the endpoints return paths in the demo's result folder, not PIL images."""
    from cvaegan import service as S

    app, _, w, _ = served
    fns = {f.api_name: f.fn for f in app.demo.fns.values()}
    gallery, _, _, state = fns["generate"](w, "Square 1", 7, False, 2, 1.0)
    paths = [p for p, _ in gallery] + [fns["explore"](w, "Circle 0", 3, 1.0, *[0.0] * 16)]
    paths += [p for p, _ in fns["swap"](w, 3, 1.0)]
    frames, gif = fns["interpolate"](w, "Circle 0", 1, None, "Square 1", 2, None, "both", 3)
    paths += frames + [gif]
    editor = fns["send_to_inpaint"](state)
    paths += [editor["background"]]
    for p in paths:
        assert isinstance(p, str) and Path(p).is_relative_to(S.output_dir()) and Path(p).is_file(), p
    assert len(set(paths)) == len(paths)


def test_model_switch_gives_every_dropdown_its_own_valid_update(served):
    """Finding 1: one update dict was shared by several dropdowns; Gradio consumed it on the first, the
    others came out empty and every later Explore event failed with 'not in the list of choices'."""
    app, _, w, _ = served
    fns = {f.api_name: f.fn for f in app.demo.fns.values()}
    for choice in (w, "faces"):
        out = fns["select_model"](choice)
        names = app.registry.get(choice).model.config.class_names
        dropdowns = out[1:8]
        assert len({id(d) for d in dropdowns}) == 7
        for d in dropdowns:
            assert d["value"] in [v for _, v in d["choices"]] and d["value"] in names + [app.AUTO]
        assert [u["visible"] for u in out[11:]][: len(app.registry.get(choice).model.config.directions)] == [
            True
        ] * len(app.registry.get(choice).model.config.directions)
    cleared = fns["select_model_outputs"]("faces")
    examples, pending = cleared[9], cleared[8]
    assert examples and pending["background"] and pending["layers"]  # the faces examples, for the canvas
    assert fns["select_model_outputs"](w)[9] == []  # no examples shipped for the extra weights


def test_explore_view_over_http_shows_original_and_edit(served):
    _, client, w, _ = served
    orig, edited, note = client.predict(w, "Circle 0", 3, 1.0, None, *[0.0] * 16, api_name="/explore_view")
    assert np.array_equal(np.asarray(Image.open(orig)), np.asarray(Image.open(edited))) and "seed 3" in note
    _, moved, _ = client.predict(w, "Circle 0", 3, 1.0, None, 2.0, *[0.0] * 15, api_name="/explore_view")
    assert not np.array_equal(np.asarray(Image.open(moved)), np.asarray(Image.open(edited)))
