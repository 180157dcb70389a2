"""Gradio demo of cvaegan (UI only): pick a model, generate, explore latent sliders, morph, inpaint.

`python app.py` serves the bundled weights; `python app.py --weights DIR_OR_REPO` (or the
CVAEGAN_WEIGHTS variable) adds another weights folder or Hub repo. Runs unchanged as a Space.
Every file the app shows comes from the package (weights/, examples/ beside it) or from its own
result folder, so it works from any working directory.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from types import SimpleNamespace

import gradio as gr

from cvaegan import service as S

MAX_SLIDERS = 16
NEAR_PHOTOS_DEFAULT = False  # Generate: classes added from photos sample z ~ N(0, I) (the paper's prior) unless ticked
AUTO = S.AUTO
CITATION = """```bibtex
@inproceedings{bao2017cvaegan,
  title     = {{CVAE-GAN}: Fine-Grained Image Generation through Asymmetric Training},
  author    = {Bao, Jianmin and Chen, Dong and Wen, Fang and Li, Houqiang and Hua, Gang},
  booktitle = {IEEE International Conference on Computer Vision (ICCV)},
  year      = {2017}
}
```"""
GLOSSARY = """**Reading the model card.** *C* is the model's own classifier; the *judge* is a separate classifier
trained only on real photos, so its score is the fairer one. *top-1*: how often the right class is the first
guess (chance = 1 / number of classes). *PSNR* (dB): how close a picture is to the original, higher is
closer. *FID*: distance between generated and real pictures as the judge sees them, lower is better.
*MS-SSIM diversity*: how different samples of one class are from each other. *R^2*: how well a straight
line predicts an attribute (1 = perfectly). *SD*: one standard deviation of an attribute over the real photos."""
SLIDER_HELP = (
    "Each slider moves the sample's latent code z along one saved direction. **Unit: one standard "
    "deviation** (of the attribute over the training photos for a named slider, of z along a "
    "principal direction otherwise). **+** moves the way the label says; principal directions "
    "are learned, so try both ways. Sliders update on release."
)
# Results come at the model's resolution (64 px now): the page scales them up smoothly (the browser's
# filter), downloads stay at native size. Captions sit under thumbnails instead of over the picture, and a
# gallery's label above its grid (a label wrapping to two lines on a phone used to cover the first row).
CSS = """
.smooth img, .smooth canvas { image-rendering: auto; }
.big-image img { width: 100% !important; height: 100% !important; object-fit: contain; }
.auto-height .grid-wrap.fixed-height { max-height: none !important; height: auto !important; min-height: 0 !important;
  overflow: visible !important; }
#class-thumbs .thumbnail-item { aspect-ratio: 4 / 5 !important; display: flex !important; flex-direction: column !important; }
#class-thumbs .thumbnail-item img { flex: 1 1 auto; min-height: 0; width: 100%; object-fit: contain; }
#class-thumbs .caption-label { position: static !important; transform: none !important; max-width: 100% !important;
  background: none !important; color: var(--body-text-color) !important; white-space: normal !important;
  font-size: 11px !important; line-height: 1.2 !important; padding: 2px !important; text-align: center; border: none !important; }
.auto-height [data-testid="block-label"] { position: static !important; }
@media (max-width: 640px) { .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important; } }
"""
LAUNCH = {"css": CSS, "max_file_size": "10mb"}


def ui_errors(fn):
    """Show our validation errors as a Gradio error toast instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            raise gr.Error(str(e)) from None

    return wrapper


def dropdown(choices, value, **kw):
    return gr.Dropdown(choices, value=value, filterable=True, **kw)


def build_generate(ui, first):
    m = first.model
    with gr.Row():
        ui.cls = dropdown(S.class_choices(m), m.config.class_names[0], label="Class (type a name or number)", scale=2)
        ui.seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1)
        ui.randomize = gr.Checkbox(False, label="Randomize seed", scale=1)
    with gr.Row():
        ui.count = gr.Slider(1, S.MAX_SAMPLES, value=8, step=1, label="Number of samples")
        ui.truncation = gr.Slider(
            0.0,
            2.0,
            value=S.DEFAULT_TRUNCATION,
            step=0.05,
            label="Truncation (z scale; lower = more typical, 1 = the paper's prior)",
        )
    ui.near_photos = near_photos_box()
    ui.gen_btn = gr.Button("Generate", variant="primary")
    ui.seed_used = gr.Markdown()
    ui.gallery = gr.Gallery(
        label="Samples (click one to enlarge; downloads are at the model's resolution)",
        columns=4,
        height="auto",
        format="png",
        buttons=["download"],
        object_fit="contain",
        elem_classes=["smooth", "auto-height"],
        elem_id="samples",
    )
    with gr.Row():
        ui.to_explore = gr.Button("Edit the first sample in Explore")
        ui.to_inpaint = gr.Button("Send first sample to Inpaint")
    with gr.Accordion("Pick a class by picture", open=True):
        ui.thumbs = gr.Gallery(
            value=list(zip(first.thumbnails, S.class_display_names(m))),
            columns=8,
            height=420,
            allow_preview=False,
            label="One generated sample per class (click to pick)",
            elem_id="class-thumbs",
            elem_classes=["smooth"],
        )
    build_enrol(ui)
    ui.last_images = gr.State([])


def build_enrol(ui):
    with gr.Accordion("Add your own person or species", open=False):
        gr.Markdown(
            f"Upload 3-10 different photos of one person, flower or bird this model has never seen, give "
            f"it a name and press Add: the model learns a new class in one to two minutes on a 2-core CPU (its "
            f"networks stay unchanged) and the class appears in every picker until the app restarts. Framing: "
            f"{S.EN.FRAMING_HINT}."
        )
        with gr.Row():
            ui.en_files = gr.File(
                label="Photos (3-10)", file_count="multiple", file_types=["image"], type="filepath", height=200, scale=3
            )
            with gr.Column(scale=2, min_width=200):
                ui.en_name = gr.Textbox(label="Name of the new class", placeholder="e.g. Ada Lovelace", max_lines=1)
                ui.en_btn = gr.Button("Add", variant="primary")
        ui.en_status = gr.Markdown()
        ui.en_sheet = gr.Image(
            label="Your photos (top row) and samples of the new class",
            type="filepath",
            format="png",
            interactive=False,
            height=260,
            elem_classes=["smooth"],
            elem_id="enrol-sheet",
        )
        ui.en_new = gr.Textbox(visible=False)  # the new class name (what /enrol returns first)


def build_explore(ui, first):
    m = first.model
    gr.Markdown(SLIDER_HELP)
    with gr.Row():
        ui.ex_cls = dropdown(S.class_choices(m), m.config.class_names[0], label="Class (type a name or number)")
        ui.ex_seed = gr.Number(0, label="Seed (Enter to apply)", precision=0, minimum=0)
        ui.ex_trunc = gr.Slider(0.0, 2.0, value=S.DEFAULT_TRUNCATION, step=0.05, label="Truncation")
    with gr.Row():
        with gr.Column(scale=2):
            ui.sliders = [
                gr.Slider(-3, 3, value=0, step=0.1, label=f"direction {i}", visible=False) for i in range(MAX_SLIDERS)
            ]
            ui.reset = gr.Button("Reset sliders")
        with gr.Column(scale=3):
            with gr.Row():
                ui.ex_orig = gr.Image(
                    label="Original",
                    type="filepath",
                    format="png",
                    interactive=False,
                    height=300,
                    elem_classes=["big-image", "smooth"],
                    elem_id="explore-original",
                )
                ui.ex_img = gr.Image(
                    label="Edited sample",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=300,
                    elem_classes=["big-image", "smooth"],
                    elem_id="explore-edited",
                )
            ui.ex_note = gr.Markdown()
            with gr.Accordion("Start from your own image (E encodes it)", open=False):
                ui.ex_photo = gr.Image(
                    label="Image to explore (replaces class + seed; clear it to go back)",
                    type="pil",
                    sources=["upload", "clipboard"],
                    height=220,
                    elem_id="explore-photo",
                )
    ui.swap_btn = gr.Button("Same z, every class (identity swap)")
    ui.swap_gal = gr.Gallery(
        label="One z, all classes", columns=8, height="auto", format="png", elem_classes=["smooth", "auto-height"]
    )


def near_photos_box():
    return gr.Checkbox(
        NEAR_PHOTOS_DEFAULT,
        label="Classes added from photos: sample near their photos",
        info="z is drawn around the enrolment photos' codes instead of from N(0, I); trained classes are unaffected",
    )


def build_interpolate(ui, first):
    m = first.model
    names = m.config.class_names
    ui.ends = []
    with gr.Row():
        for tag in ("A", "B"):
            with gr.Column(min_width=160):
                gr.Markdown(f"**Endpoint {tag}**: a class and seed, or upload a photo")
                e_cls = dropdown(
                    S.class_choices(m, auto=True),
                    names[0 if tag == "A" else min(1, len(names) - 1)],
                    label=f"Class {tag} (auto: C's guess for a photo)",
                )
                e_seed = gr.Number(0 if tag == "A" else 1, label=f"Seed {tag}", precision=0, minimum=0)
                e_img = gr.Image(label=f"Photo {tag} (optional)", type="pil", sources=["upload"], height=200)
                ui.ends += [e_cls, e_seed, e_img]
    with gr.Row():
        ui.mode = gr.Radio(["z", "class", "both"], value="both", label="What changes")
        ui.frames = gr.Slider(2, S.MAX_FRAMES, value=8, step=1, label="Frames")
    ui.morph_near = near_photos_box()
    ui.morph_btn = gr.Button("Interpolate", variant="primary")
    with gr.Row():
        ui.morph_anim = gr.Image(
            label="Animation",
            type="filepath",
            interactive=False,
            height=300,
            elem_classes=["big-image", "smooth"],
            elem_id="morph-animation",
        )
        ui.morph_gif = gr.File(label="Animated GIF (download)")
    ui.morph_gal = gr.Gallery(
        label="Frames", columns=8, height="auto", format="png", elem_classes=["smooth", "auto-height"]
    )


def build_inpaint(ui, first, examples):
    m = first.model
    gr.Markdown(
        "Paint over the part to replace (any colour), pick the class or leave it on auto to have it guessed, then run. "
        "The result keeps your photo's size; only painted pixels change."
    )
    with gr.Row():
        ui.editor = gr.ImageEditor(
            label="Photo + mask",
            type="numpy",
            sources=["upload", "clipboard"],
            brush=gr.Brush(default_size="auto", colors=["#ff00ff", "#ffffff"], color_mode="defaults"),
            eraser=gr.Eraser(default_size="auto"),
            layers=False,
            transforms=(),
            height=420,
            elem_id="inpaint-editor",
            scale=3,
        )
        with gr.Column(scale=2, min_width=200):
            ui.in_cls = dropdown(S.class_choices(m, auto=True), AUTO, label="Class")
            ui.iters = gr.Slider(
                1, S.MAX_ITERATIONS, value=S.DEFAULT_ITERATIONS, step=1, label="Iterations (encode-generate-paste)"
            )
            ui.refine = gr.Slider(0, S.MAX_REFINE, value=0, step=10, label="Refinement steps (optimise z)")
            ui.inpaint_btn = gr.Button("Inpaint", variant="primary")
            ui.in_class = gr.Markdown()
            ui.in_examples = gr.Gallery(
                value=examples,
                label="Examples (generated by the model; click one)",
                columns=3,
                height="auto",
                allow_preview=False,
                elem_id="inpaint-examples",
                elem_classes=["auto-height"],
            )
    ui.in_result = gr.ImageSlider(
        label="Before / after (drag the handle)",
        type="pil",
        format="png",
        interactive=False,
        elem_id="inpaint-result",
        elem_classes=["smooth"],
    )
    with gr.Row():
        ui.again_btn = gr.Button("Edit the result again")
        ui.result_to_explore = gr.Button("Explore the result (E encodes it)")
    with gr.Accordion("Enhance: super-resolve a small photo", open=False):
        with gr.Row():
            ui.sr_in = gr.Image(label="Small photo (below the model resolution)", type="pil", sources=["upload"])
            ui.sr_out = gr.Image(
                label="Enhanced", type="pil", format="png", height=300, elem_classes=["big-image", "smooth"]
            )
        with gr.Row():
            ui.sr_cls = dropdown(S.class_choices(m, auto=True), AUTO, label="Class")
            ui.sr_steps = gr.Slider(10, S.MAX_SR_STEPS, value=100, step=10, label="Steps")
            ui.sr_btn = gr.Button("Enhance")
        ui.sr_info = gr.Markdown()
    with gr.Accordion("Reconstruct: photo -> E -> G", open=False):
        with gr.Row():
            ui.rc_in = gr.Image(label="Photo", type="pil", sources=["upload"])
            ui.rc_out = gr.Image(
                label="Reconstruction", type="pil", format="png", height=300, elem_classes=["big-image", "smooth"]
            )
        with gr.Row():
            ui.rc_cls = dropdown(S.class_choices(m, auto=True), AUTO, label="Class")
            ui.rc_refine = gr.Slider(
                0,
                S.MAX_REFINE,
                value=0,
                step=10,
                label="Refinement steps (optimise z on the photo: closer likeness, code further from the prior)",
            )
            ui.rc_btn = gr.Button("Reconstruct")
        ui.rc_info = gr.Markdown()


def build_about(ui, first):
    ui.summary = gr.Markdown(about_summary(first))
    with gr.Accordion("What the numbers mean", open=False):
        gr.Markdown(GLOSSARY)
    ui.card = gr.Markdown(first.card, elem_id="model-card")
    # kept for the /select_model API (its 11th output); the card now shows its own pictures
    ui.card_samples = gr.Image(None, label="samples.png", interactive=False, visible=False)
    gr.Markdown("### Cite the paper\n" + CITATION)


def about_summary(loaded) -> str:
    c = loaded.model.config
    return (
        f"### About these weights\n{c.num_classes} classes at {c.resolution}x{c.resolution} px, "
        f"{len(c.directions)} latent sliders. Below: the model card shipped with them (how they were "
        "trained and how well they do)."
    )


def status_text(loaded):
    r = loaded.resolved
    msg = f"**Showing:** {r.source} - {r.model.config.num_classes} classes, {r.model.config.resolution} px"
    return msg + (f"\n\n> Notice: {r.notice}" if r.notice else "")


def build_demo(registry: S.ModelRegistry) -> gr.Blocks:
    first = registry.get(registry.default)
    ui = SimpleNamespace()

    def model_of(choice):
        return registry.get(choice).model

    def examples_of(choice):
        pairs = S.examples_for(choice) if choice in S.bundled_names() else []
        return [(S.editor_value(img, mask)["composite"], f"example {i + 1}") for i, (img, mask) in enumerate(pairs)]

    with gr.Blocks(title="CVAE-GAN demo") as demo:
        gr.Markdown(
            "# CVAE-GAN: fine-grained image generation\nA label picks the category (a person, a "
            "species); the latent code z holds pose, expression, lighting and background "
            "([Bao et al., ICCV 2017](https://arxiv.org/abs/1703.10155))."
        )
        with gr.Row():
            ui.model_dd = gr.Dropdown(registry.choices, value=registry.default, label="Model", scale=1)
            ui.status = gr.Markdown(status_text(first))
        with gr.Tabs(selected="generate", overflow_behavior="wrap") as ui.tabs:
            with gr.Tab("Generate", id="generate"):
                build_generate(ui, first)
            with gr.Tab("Explore", id="explore"):
                build_explore(ui, first)
            with gr.Tab("Interpolate", id="interpolate"):
                build_interpolate(ui, first)
            with gr.Tab("Inpaint", id="inpaint") as ui.inpaint_tab:
                pairs = S.examples_for(registry.default) if registry.default in S.bundled_names() else []
                build_inpaint(ui, first, examples_of(registry.default))
                # the editor draws its layers only when given a value while its tab is visible: a canvas
                # set while the tab is hidden waits here and is sent when the tab opens
                ui.pending = gr.State(S.editor_value(*pairs[0]) if pairs else None)
            with gr.Tab("About", id="about"):
                build_about(ui, first)
        # endpoints kept for gradio_client users whose UI event changed (never clicked on the page)
        ui.api_only = gr.Button("api", visible=False)
        wire_events(demo, ui, registry, model_of, examples_of)
    return demo


def wire_events(demo, ui, registry, model_of, examples_of):
    def slider_updates(model):
        dirs = model.config.directions
        return [
            gr.update(
                visible=i < len(dirs), value=0, label=S.direction_hint(dirs[i]) if i < len(dirs) else f"direction {i}"
            )
            for i in range(MAX_SLIDERS)
        ]

    # ------------------------------------------------------------ model switch: every tab follows
    @ui_errors
    def on_model(choice):
        loaded = registry.get(choice)
        m = loaded.model
        n = m.config.class_names

        def dd(value, auto=False):  # a fresh update per dropdown (Gradio consumes each update dict)
            return gr.update(choices=S.class_choices(m, auto), value=value)

        return [
            status_text(loaded),
            dd(n[0]),
            dd(n[0]),
            dd(n[0], True),
            dd(n[min(1, len(n) - 1)], True),
            dd(AUTO, True),
            dd(AUTO, True),
            dd(AUTO, True),
            S.as_files(list(zip(loaded.thumbnails, S.class_display_names(m)))),
            loaded.card,
            gr.update(value=None, visible=False),
            *slider_updates(m),
        ]

    ev = ui.model_dd.change(
        on_model,
        ui.model_dd,
        [
            ui.status,
            ui.cls,
            ui.ex_cls,
            ui.ends[0],
            ui.ends[3],
            ui.in_cls,
            ui.sr_cls,
            ui.rc_cls,
            ui.thumbs,
            ui.card,
            ui.card_samples,
            *ui.sliders,
        ],
        api_name="select_model",
    )

    def on_model_outputs(choice):
        """Clear what the previous model produced; load the new model's first inpainting example."""
        loaded = registry.get(choice)
        ex = examples_of(choice)
        pairs = S.examples_for(choice) if ex else []
        editor = S.editor_value(*pairs[0]) if pairs else None  # shown when the Inpaint tab opens
        return [None, [], "", [], [], None, None, None, editor, ex, None, "", None, "", None, "", about_summary(loaded)]

    ev = ev.then(
        on_model_outputs,
        ui.model_dd,
        [
            ui.ex_photo,
            ui.gallery,
            ui.seed_used,
            ui.swap_gal,
            ui.morph_gal,
            ui.morph_gif,
            ui.morph_anim,
            ui.editor,
            ui.pending,
            ui.in_examples,
            ui.in_result,
            ui.in_class,
            ui.sr_out,
            ui.sr_info,
            ui.rc_out,
            ui.rc_info,
            ui.summary,
        ],
        api_name="select_model_outputs",
        api_visibility="undocumented",
    )

    def after_enrol(choice, new, ex, a, b, inp, sr, rc):
        """Every picker gets the new class among its choices: Generate's shows it, the others keep their value;
        the thumbnails get the new class's too."""
        loaded = registry.get(choice)
        m = loaded.model
        return [
            gr.update(choices=S.class_choices(m), value=new),
            gr.update(choices=S.class_choices(m), value=ex),
            gr.update(choices=S.class_choices(m, True), value=a),
            gr.update(choices=S.class_choices(m, True), value=b),
            *[gr.update(choices=S.class_choices(m, True), value=v) for v in (inp, sr, rc)],
            S.as_files(list(zip(loaded.thumbnails, S.class_display_names(m)))),
        ]

    # ------------------------------------------------------------ generate
    def pick_class(choice, evt: gr.SelectData):
        return model_of(choice).config.class_names[evt.index]

    ui.thumbs.select(pick_class, ui.model_dd, ui.cls, api_name="pick_class", api_visibility="undocumented")

    @ui_errors
    def on_generate(choice, c, s, rnd, n, t, near=NEAR_PHOTOS_DEFAULT):
        images, used = S.generate(model_of(choice), c, s, rnd, n, t, bool(near))
        note = f"Seed used: **{used}**"
        if float(t) == 0 and len(images) > 1:
            note += (
                " - truncation 0 sets z = 0 for every seed, so all samples are the same picture; raise it for variety."
            )
        return S.as_files([(img, f"seed {used + i}") for i, img in enumerate(images)]), note, used, images

    ui.gen_btn.click(
        on_generate,
        [ui.model_dd, ui.cls, ui.seed, ui.randomize, ui.count, ui.truncation, ui.near_photos],
        [ui.gallery, ui.seed_used, ui.seed, ui.last_images],
        api_name="generate",
        concurrency_limit=2,
    )

    def send_to_inpaint(images):
        if not images:
            raise gr.Error("generate a sample first")
        return S.editor_value(images[0])

    def open_inpaint(images):
        if not images:
            raise gr.Error("generate a sample first")
        gr.Info("The first sample is on the Inpaint canvas (enlarged): paint over a part and press Inpaint.")
        return gr.Tabs(selected="inpaint"), None  # the sample replaces any canvas still waiting for the tab

    ui.to_inpaint.click(
        open_inpaint, ui.last_images, [ui.tabs, ui.pending], api_name="open_inpaint", api_visibility="undocumented"
    ).success(send_to_inpaint, ui.last_images, ui.editor, api_name="send_to_inpaint")

    def flush_pending(value):
        if value is None:
            return gr.update(), None
        time.sleep(0.5)  # let the tab mount the canvas first, or the mask layer is not drawn
        return value, None

    ui.inpaint_tab.select(
        flush_pending,
        ui.pending,
        [ui.editor, ui.pending],
        api_name="show_pending_canvas",
        api_visibility="undocumented",
    )

    # ------------------------------------------------------------ add your own class
    @ui_errors
    def on_enrol(choice, files, name, progress=gr.Progress()):
        loaded = registry.get(choice)
        new, sheet, text = S.enrol_class(loaded, files, name, progress=lambda f, d: progress(f, desc=d))
        if choice == registry.default:  # API sessions check values against the pickers' own (first model's) choices
            for d in (ui.cls, ui.ex_cls, ui.ends[0], ui.ends[3], ui.in_cls, ui.sr_cls, ui.rc_cls):
                d.choices = S.class_choices(loaded.model, auto=any(v == AUTO for _, v in d.choices))
        return new, S.as_files(sheet), text

    ui.en_btn.click(
        on_enrol,
        [ui.model_dd, ui.en_files, ui.en_name],
        [ui.en_new, ui.en_sheet, ui.en_status],
        api_name="enrol",
        concurrency_limit=1,
    ).success(
        after_enrol,
        [ui.model_dd, ui.en_new, ui.ex_cls, ui.ends[0], ui.ends[3], ui.in_cls, ui.sr_cls, ui.rc_cls],
        [ui.cls, ui.ex_cls, ui.ends[0], ui.ends[3], ui.in_cls, ui.sr_cls, ui.rc_cls, ui.thumbs],
        api_name="enrol_pickers",
        api_visibility="undocumented",
    )

    # ------------------------------------------------------------ explore
    explore_in = [ui.model_dd, ui.ex_cls, ui.ex_seed, ui.ex_trunc, ui.ex_photo, *ui.sliders]
    explore_out = [ui.ex_orig, ui.ex_img, ui.ex_note]

    @ui_errors
    def on_explore_view(choice, c, s, t, photo, *amounts):
        m = model_of(choice)
        orig, edited, note = S.explore_pair(m, c, s, t, photo, dict(zip(m.config.directions, amounts)))
        return S.as_files(orig), S.as_files(edited), note

    gr.on(
        [s.release for s in ui.sliders]
        + [ui.ex_cls.input, ui.ex_seed.submit, ui.ex_trunc.release, ui.ex_photo.upload, ui.ex_photo.clear],
        on_explore_view,
        explore_in,
        explore_out,
        api_name="explore_view",
        concurrency_limit=2,
    )
    ev.then(on_explore_view, explore_in, explore_out, api_name="explore_after_model", api_visibility="undocumented")
    ui.reset.click(
        lambda choice: [gr.update(value=0) for _ in ui.sliders], ui.model_dd, ui.sliders, api_name="reset_sliders"
    ).then(on_explore_view, explore_in, explore_out, api_name="explore_view_after_reset", api_visibility="undocumented")

    @ui_errors
    def on_explore(choice, c, s, t, *amounts):  # the original /explore endpoint: edited sample only
        m = model_of(choice)
        return S.as_files(S.explore(m, c, s, t, dict(zip(m.config.directions, amounts))))

    legacy_in = [ui.model_dd, ui.ex_cls, ui.ex_seed, ui.ex_trunc, *ui.sliders]
    ui.api_only.click(on_explore, legacy_in, ui.ex_img, api_name="explore", concurrency_limit=2)
    ui.api_only.click(on_explore, legacy_in, ui.ex_img, api_name="explore_after_reset")

    def send_to_explore(c, s):
        return c, s, None, gr.Tabs(selected="explore")

    ui.to_explore.click(
        send_to_explore,
        [ui.cls, ui.seed],
        [ui.ex_cls, ui.ex_seed, ui.ex_photo, ui.tabs],
        api_name="send_to_explore",
        api_visibility="undocumented",
    ).then(on_explore_view, explore_in, explore_out, api_name="explore_sent", api_visibility="undocumented")

    @ui_errors
    def on_swap(choice, s, t):
        m = model_of(choice)
        names = S.class_display_names(m)
        return S.as_files([(img, names[i]) for i, (img, _) in enumerate(S.swap_grid(m, s, t))])

    ui.swap_btn.click(
        on_swap, [ui.model_dd, ui.ex_seed, ui.ex_trunc], ui.swap_gal, api_name="swap", concurrency_limit=1
    )

    # ------------------------------------------------------------ interpolate
    @ui_errors
    def on_morph(choice, ca, sa, ia, cb, sb, ib, md, nf, near=NEAR_PHOTOS_DEFAULT):
        return S.as_files(S.interpolate(model_of(choice), (ca, sa, ia), (cb, sb, ib), md, nf, bool(near)))

    ui.morph_btn.click(
        on_morph,
        [ui.model_dd, *ui.ends, ui.mode, ui.frames, ui.morph_near],
        [ui.morph_gal, ui.morph_gif],
        api_name="interpolate",
        concurrency_limit=1,
    ).success(lambda gif: gif, ui.morph_gif, ui.morph_anim, api_name="show_animation", api_visibility="undocumented")

    # ------------------------------------------------------------ inpaint
    @ui_errors
    def on_inpaint(choice, value, c, k, rs, progress=gr.Progress()):
        before, after, text = S.inpaint_full(
            model_of(choice), value, c, k, rs, progress=lambda f, d: progress(f, desc=d)
        )
        name, _, guesses = text.partition(". ")
        return S.as_files((before, after)), f"Class used: **{name}**" + (f"\n\n{guesses}" if guesses else "")

    ui.inpaint_btn.click(
        on_inpaint,
        [ui.model_dd, ui.editor, ui.in_cls, ui.iters, ui.refine],
        [ui.in_result, ui.in_class],
        api_name="inpaint",
        concurrency_limit=2,
    )

    @ui_errors
    def load_example(choice, evt: gr.SelectData):
        img, mask = S.examples_for(choice)[evt.index]
        return S.editor_value(img, mask), AUTO

    ui.in_examples.select(
        load_example, ui.model_dd, [ui.editor, ui.in_cls], api_name="load_example", api_visibility="undocumented"
    )

    def result_image(result):
        if not result or result[1] is None:
            raise gr.Error("inpaint something first")
        return result[1]

    ui.again_btn.click(
        lambda r: S.editor_value(result_image(r)),
        ui.in_result,
        ui.editor,
        api_name="inpaint_again",
        api_visibility="undocumented",
    )
    ui.result_to_explore.click(
        lambda r: (S.as_files(result_image(r)), gr.Tabs(selected="explore")),
        ui.in_result,
        [ui.ex_photo, ui.tabs],
        api_name="explore_result",
        api_visibility="undocumented",
    ).then(on_explore_view, explore_in, explore_out, api_name="explore_result_view", api_visibility="undocumented")

    @ui_errors
    def on_enhance(choice, img, c, n, progress=gr.Progress()):
        return S.as_files(S.enhance(model_of(choice), img, c, n, progress=lambda f, d: progress(f, desc=d)))

    ui.sr_btn.click(
        on_enhance,
        [ui.model_dd, ui.sr_in, ui.sr_cls, ui.sr_steps],
        [ui.sr_out, ui.sr_info],
        api_name="enhance",
        concurrency_limit=1,
    )

    @ui_errors
    def on_reconstruct(choice, img, c, refine=0, progress=gr.Progress()):
        m = model_of(choice)
        out, text, db = S.reconstruct(m, img, c, refine, progress=lambda f, d: progress(f, desc=d))
        px = m.config.resolution
        return S.as_files(out), f"Class used: **{text}**. Likeness to your photo at {px} px: PSNR {db:.1f} dB"

    ui.rc_btn.click(
        on_reconstruct,
        [ui.model_dd, ui.rc_in, ui.rc_cls, ui.rc_refine],
        [ui.rc_out, ui.rc_info],
        api_name="reconstruct",
        concurrency_limit=2,
    )

    # ------------------------------------------------------------ page load: Explore opens on a sample
    first = registry.get(registry.default).model
    demo.load(lambda: slider_updates(first), None, ui.sliders, api_name="init_sliders").then(
        on_explore_view, explore_in, explore_out, api_name="explore_on_load", api_visibility="undocumented"
    )


def make_demo(registry: S.ModelRegistry) -> gr.Blocks:
    """The demo for a model registry, with the request queue the Space runs with (tests build theirs here)."""
    blocks = build_demo(registry)
    blocks.queue(default_concurrency_limit=2, max_size=64)
    return blocks


registry = S.ModelRegistry(os.environ.get("CVAEGAN_WEIGHTS"))
demo = make_demo(registry)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="CVAE-GAN Gradio demo")
    ap.add_argument(
        "--weights", default=None, help="extra weights folder or Hub repo id owner/name (also CVAEGAN_WEIGHTS)"
    )
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port")
    args = ap.parse_args()
    if args.weights:
        registry = S.ModelRegistry(args.weights)
        demo = make_demo(registry)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, **LAUNCH)
