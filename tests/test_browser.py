"""The app in a real browser: Debian's Chromium driven by Playwright. Screenshots of every tab go to
test-artifacts/screenshots/. Skipped (with the reason) only when Chromium is not installed."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from appserver import launch_app

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                 ".ci/run installs it so CI runs this test")]
SHOTS = Path(os.environ.get("CVAEGAN_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def page_and_app(trained_export, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from cvaegan import service as S

    calls = []
    real_inpaint = S.inpaint

    def spy(model, value, *a, **k):  # record what the browser sent and what came back
        before, after, text = real_inpaint(model, value, *a, **k)
        calls.append((S.editor_to_image_and_mask(value), after))
        return before, after, text
    S.inpaint = spy
    app, url = launch_app(str(trained_export))
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.get_by_text("CVAE-GAN: fine-grained image generation").wait_for(timeout=60_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield page, errors, calls
    browser.close()
    pw.stop()
    app.demo.close()
    S.inpaint = real_inpaint


def _tab(page, name):
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(400)


def test_page_loads_without_console_errors(page_and_app):
    page, errors, _ = page_and_app
    assert page.get_by_text("CVAE-GAN: fine-grained image generation").is_visible()
    page.screenshot(path=str(SHOTS / "generate.png"), full_page=True)
    assert errors == [], errors


def test_pick_class_and_generate_shows_an_image(page_and_app):
    page, errors, _ = page_and_app
    _tab(page, "Generate")
    dd = page.get_by_label("Class (type to search)")
    dd.click()
    dd.fill("Triangle")
    page.get_by_role("option", name="Triangle 2").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("Seed used:").wait_for(timeout=60_000)
    imgs = page.locator("[data-testid='gallery'] img, .gallery img, button img").all()
    assert any(i.is_visible() for i in imgs)
    page.screenshot(path=str(SHOTS / "generate_result.png"), full_page=True)
    for tab in ("Explore", "Interpolate", "About"):
        _tab(page, tab)
        page.screenshot(path=str(SHOTS / f"{tab.lower()}.png"), full_page=True)
    assert errors == [], errors


def test_draw_on_inpaint_canvas_changes_only_the_stroke(page_and_app, tmp_path):
    from conftest import draw_shape

    page, errors, calls = page_and_app
    _tab(page, "Inpaint")
    photo = tmp_path / "photo.png"
    draw_shape(0, 256, np.random.default_rng(4)).save(photo)
    editor = page.locator("#inpaint-editor")
    editor.locator("input[type=file]").set_input_files(str(photo))
    canvas = editor.locator("canvas").first
    canvas.wait_for(timeout=30_000)
    page.wait_for_timeout(3000)  # the editor decodes and draws the upload asynchronously
    box = canvas.bounding_box()
    brush = page.get_by_role("button", name="Brush")
    if brush.count():
        brush.first.click()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for dx in range(-40, 41, 5):
        page.mouse.move(cx + dx, cy + dx / 4)
    page.mouse.up()
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Inpaint", exact=True).click()
    page.get_by_text("Class used:").wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "inpaint.png"), full_page=True)
    assert calls, "the inpaint handler was not called"
    (img, mask), after = calls[-1]
    src, out = np.asarray(img), np.asarray(after)
    assert src.std() > 10, "the uploaded photo did not reach the handler"
    assert img.size == (256, 256)
    assert mask.any() and not mask.all()
    assert np.array_equal(out[~mask], src[~mask])
    assert (out[mask] != src[mask]).any()
    assert errors == [], errors
