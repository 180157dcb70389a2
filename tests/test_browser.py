"""The app in a real browser: Debian's Chromium driven by Playwright, on the bundled weights, served from
another working directory. Screenshots of every tab (desktop and 390-px phone width) go to
test-artifacts/screenshots/. Skipped (with the reason) only when Chromium is not installed."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from appserver import launch_app
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed (apt-get install chromium); .ci/run installs it so CI runs this test",
    ),
]
SHOTS = Path(os.environ.get("CVAEGAN_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots")).resolve()  # before chdir
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TABS = ("Generate", "Explore", "Interpolate", "Inpaint", "About")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The bundled weights (faces first), launched from a folder that is not the repository (finding 11)."""
    from playwright.sync_api import sync_playwright

    from cvaegan import service as S

    calls = []
    real = S.inpaint_full

    def spy(model, value, *a, **k):  # record what the browser sent and what came back
        before, after, text = real(model, value, *a, **k)
        calls.append((S.editor_to_image_and_mask(value), after, model.config.class_names, text))
        return before, after, text

    S.inpaint_full = spy
    old_cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    app, url = launch_app(None)
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield browser, url, calls
    browser.close()
    pw.stop()
    app.demo.close()
    os.chdir(old_cwd)
    S.inpaint_full = real


def open_page(browser, url, width=1280, height=1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    # Gradio's ImageEditor logs "No draw texture found for layer" when a mask layer arrives while its
    # canvas is still being mounted (tab just opened, busy machine). The mask still reaches the handler
    # (asserted in test_model_switch_...); the message is tolerated here and reported as an open issue.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "No draw texture found for layer" not in m.text else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load", timeout=120_000)
    page.get_by_text("CVAE-GAN: fine-grained image generation").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    return page, errors


def tab(page, name):
    page.evaluate("window.scrollTo(0, 0)")
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(1200)


def error_toasts(page):
    return [t for t in page.locator(".toast-body").all_inner_texts() if "rror" in t]


def shoot(page, path, **kw):
    """Screenshot after dismissing the toasts, which cover the "Showing: ..." line; returns the error toasts
    it dismissed, so the caller can still assert there were none."""
    errs = error_toasts(page)
    for close in page.locator('[data-testid="toast-close"]').all():
        if close.is_visible():
            close.click()
    page.wait_for_timeout(400)
    page.screenshot(path=str(path), **kw)
    return errs


def switch_model(page, name):
    page.get_by_label("Model").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.get_by_text(f"bundled weights/{name}").wait_for(timeout=60_000)
    page.wait_for_timeout(2500)


def painted_fraction(mask):
    return float(np.asarray(mask).mean())


def shown_width(page, selector):
    img = page.locator(f"{selector} img").first
    img.wait_for(state="visible", timeout=30_000)
    return img.bounding_box()["width"]


def test_explore_opens_on_a_sample_beside_its_edit_at_a_visible_size(served):
    browser, url, _ = served
    page, errors = open_page(browser, url)
    tab(page, "Explore")
    assert shown_width(page, "#explore-original") >= 256 and shown_width(page, "#explore-edited") >= 256
    assert page.get_by_text("Unit: one standard deviation").is_visible()
    assert page.get_by_text("head turn (+ turns towards the picture's right)").is_visible()
    assert errors == [] and error_toasts(page) == []
    page.close()


def test_model_switch_then_explore_interpolate_and_inpaint_work(served):
    """Finding 1: after switching model, Explore's sliders and Interpolate failed with 'not in the list of choices'."""
    from cvaegan import CVAEGAN

    browser, url, calls = served
    birds = CVAEGAN.from_pretrained(str(ROOT / "weights" / "birds")).config.class_names
    page, errors = open_page(browser, url)
    switch_model(page, "birds")
    tab(page, "Explore")
    assert page.get_by_label("Class (type a name or number)").nth(1).input_value() in birds
    before = page.locator("#explore-edited img").get_attribute("src")
    track = page.locator("input[type=range]").nth(3).bounding_box()  # first visible Explore slider
    page.mouse.click(track["x"] + track["width"] * 0.9, track["y"] + track["height"] / 2)
    page.wait_for_function(f"() => document.querySelector('#explore-edited img').src !== {before!r}", timeout=30_000)
    tab(page, "Interpolate")
    page.get_by_role("button", name="Interpolate", exact=True).click()
    page.locator("#morph-animation img").wait_for(state="visible", timeout=60_000)
    assert page.locator("#morph-animation img").get_attribute("src").endswith(".gif")
    assert shown_width(page, "#morph-animation") >= 256
    tab(page, "Inpaint")
    page.wait_for_timeout(2000)
    page.get_by_role("button", name="Inpaint", exact=True).click()  # the birds example's mask is on the canvas
    page.get_by_text("Class used:").wait_for(timeout=60_000)
    (photo, mask), after, names, text = calls[-1]
    assert names == birds and any(b in text for b in birds)
    assert mask.any() and photo.size == after.size and min(photo.size) >= 256
    assert errors == [] and error_toasts(page) == [], (errors, error_toasts(page))
    page.close()


def test_inpaint_examples_live_in_their_tab_and_follow_the_model(served):
    """Finding 4: the faces examples showed under every tab and stayed faces for the other models."""
    browser, url, _ = served
    page, errors = open_page(browser, url)
    assert not page.locator("#inpaint-examples").is_visible()  # Generate tab: no inpainting examples
    tab(page, "Inpaint")
    faces = [i.get_attribute("src") for i in page.locator("#inpaint-examples img").all()]
    assert len(faces) >= 1
    switch_model(page, "flowers")
    flowers = [i.get_attribute("src") for i in page.locator("#inpaint-examples img").all()]
    assert flowers and set(flowers).isdisjoint(faces)
    page.locator("#inpaint-examples img").first.click()
    page.wait_for_timeout(1500)
    assert errors == [] and error_toasts(page) == []
    page.close()


def test_send_to_inpaint_switches_tab_and_fills_the_canvas(served):
    """Finding 3: the button gave no feedback, the tab stayed, the canvas stayed black."""
    browser, url, calls = served
    page, errors = open_page(browser, url)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("Seed used:").wait_for(timeout=60_000)
    page.get_by_role("button", name="Send first sample to Inpaint").click()
    page.get_by_text("is on the Inpaint canvas").wait_for(timeout=30_000)
    assert page.locator("[role=tab][aria-selected=true]").inner_text().strip() == "Inpaint"
    page.wait_for_timeout(2000)
    canvas = page.locator("#inpaint-editor canvas").first
    box = canvas.bounding_box()
    brush = page.get_by_role("button", name="Brush")
    if brush.count():
        brush.first.click()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    n = len(calls)
    # Gradio's ImageEditor can drop the first stroke on a canvas that was filled while its tab was hidden
    # (its mask layer is not ready yet; the handler then answers "the mask is empty"): draw again, up to 3 times.
    retried = False
    for _ in range(3):
        page.mouse.move(cx - 40, cy)
        page.mouse.down()
        for dx in range(-40, 41, 5):
            page.mouse.move(cx + dx, cy + dx / 4)
        page.mouse.up()
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Inpaint", exact=True).click()
        try:
            page.get_by_text("Class used:").wait_for(timeout=30_000)
            break
        except PlaywrightTimeout:
            retried = True
            page.wait_for_timeout(2000)
    else:
        pytest.fail("three strokes on the canvas never reached the inpaint handler with a mask")
    page.wait_for_timeout(500)
    assert len(calls) > n, "the inpaint handler was not called"
    (img, mask), after, _, _ = calls[-1]
    src, out = np.asarray(img), np.asarray(after)
    assert img.size == (256, 256) and src.std() > 10  # the sample arrived, enlarged so the brush fits
    assert painted_fraction(mask) < 0.1  # only the stroke: not an example's mask left on the canvas
    assert mask.any() and not mask.all()
    assert np.array_equal(out[~mask], src[~mask]) and (out[mask] != src[mask]).any()
    toasts = shoot(page, SHOTS / "app_inpaint.png", full_page=True)
    toasts = [t for t in toasts + error_toasts(page) if not (retried and "mask is empty" in t)]
    assert errors == [] and toasts == [], (errors, toasts)
    page.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_every_tab_at_desktop_and_phone_width(served, width):
    """Finding 12: at 390 px three tabs hid behind a menu and galleries were clipped."""
    browser, url, _ = served
    page, errors = open_page(browser, url, width=width, height=900 if width > 400 else 844)
    suffix = "" if width > 400 else "_phone"
    for name in TABS:
        assert page.get_by_role("tab", name=name).is_visible(), f"tab {name} hidden at {width} px"
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("Seed used:").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    # At 390 px the samples gallery's two-line label used to float over the first row of samples.
    label = page.locator('#samples [data-testid="block-label"]').bounding_box()
    first = page.locator("#samples .thumbnail-item").first.bounding_box()
    assert label["y"] + label["height"] <= first["y"] + 1, f"the samples label covers the first row at {width} px"
    dismissed = []
    for name in TABS:
        tab(page, name)
        if name == "Interpolate":
            page.get_by_role("button", name="Interpolate", exact=True).click()
            page.locator("#morph-animation img").wait_for(state="visible", timeout=60_000)
        if name == "Inpaint":
            page.wait_for_timeout(3000)  # the example canvas arrives a moment after the tab opens
            if width > 400:
                continue  # the desktop Inpaint shot (with a result) comes from the send-to-inpaint test
        page.wait_for_timeout(800)
        dismissed += shoot(page, SHOTS / f"app_{name.lower()}{suffix}.png", full_page=name != "About")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} is {overflow} px wider than the {width}-px window"
    toasts = dismissed + error_toasts(page)
    assert errors == [] and toasts == [], (errors, toasts)
    page.close()
