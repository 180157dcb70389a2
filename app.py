"""Gradio demo of cvaegan (UI only): pick a model, generate, explore latent sliders, morph, inpaint.

`python app.py` serves the bundled weights; `python app.py --weights DIR_OR_REPO` (or the
CVAEGAN_WEIGHTS variable) adds another weights folder or Hub repo. Runs unchanged as a Space.
"""
from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import gradio as gr

from cvaegan import service as S

MAX_SLIDERS = 16
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
CITATION = """```bibtex
@inproceedings{bao2017cvaegan,
  title     = {{CVAE-GAN}: Fine-Grained Image Generation through Asymmetric Training},
  author    = {Bao, Jianmin and Chen, Dong and Wen, Fang and Li, Houqiang and Hua, Gang},
  booktitle = {IEEE International Conference on Computer Vision (ICCV)},
  year      = {2017}
}
```"""


def ui_errors(fn):
    """Show our validation errors as a Gradio error toast instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            raise gr.Error(str(e)) from None
    return wrapper


def build_demo(registry: S.ModelRegistry) -> gr.Blocks:
    first = registry.get(registry.default)
    names = first.model.config.class_names

    def model_of(choice):
        return registry.get(choice).model

    def slider_updates(model):
        dirs = model.config.directions
        units = model.config.direction_units
        return [gr.update(visible=i < len(dirs), value=0,
                          label=f"{S.direction_label(dirs[i])} ({units[i]})" if i < len(dirs) else f"direction {i}")
                for i in range(MAX_SLIDERS)]

    def status_text(loaded):
        r = loaded.resolved
        msg = f"**Showing:** {r.source} - {r.model.config.num_classes} classes, {r.model.config.resolution} px"
        return msg + (f"\n\n> Notice: {r.notice}" if r.notice else "")

    with gr.Blocks(title="CVAE-GAN demo") as demo:
        gr.Markdown("# CVAE-GAN: fine-grained image generation\nA label picks the category (a person, a "
                    "species); the latent code z holds pose, expression, lighting and background "
                    "([Bao et al., ICCV 2017](https://arxiv.org/abs/1703.10155)).")
        with gr.Row():
            model_dd = gr.Dropdown(registry.choices, value=registry.default, label="Model", scale=1)
            status = gr.Markdown(status_text(first))

        with gr.Tab("Generate"):
            with gr.Row():
                cls = gr.Dropdown(names, value=names[0], label="Class (type to search)", filterable=True, scale=2)
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1)
                randomize = gr.Checkbox(False, label="Randomize seed", scale=1)
            with gr.Row():
                count = gr.Slider(1, S.MAX_SAMPLES, value=4, step=1, label="Number of samples")
                truncation = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Truncation (z scale; lower = more typical)")
            gen_btn = gr.Button("Generate", variant="primary")
            seed_used = gr.Markdown()
            gallery = gr.Gallery(label="Samples", columns=4, height="auto", format="png", buttons=["download"])
            to_inpaint = gr.Button("Send first sample to Inpaint")
            with gr.Accordion("Pick a class by picture", open=True):
                thumbs = gr.Gallery(value=[(t, n) for t, n in zip(first.thumbnails, names)], columns=12,
                                    height=320, allow_preview=False, label="One generated sample per class")
            last_images = gr.State([])

        with gr.Tab("Explore"):
            gr.Markdown("Move a sample along saved latent directions (principal components of z, and named "
                        "attributes where the training data had them). One slider unit is one standard deviation "
                        "(of z along a principal direction; of the attribute over the training photos for a named "
                        "one). Sliders update on release.")
            with gr.Row():
                ex_cls = gr.Dropdown(names, value=names[0], label="Class", filterable=True)
                ex_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                ex_trunc = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Truncation")
            with gr.Row():
                with gr.Column():
                    sliders = [gr.Slider(-3, 3, value=0, step=0.1, label=f"direction {i}", visible=False)
                               for i in range(MAX_SLIDERS)]
                    reset = gr.Button("Reset sliders")
                ex_img = gr.Image(label="Edited sample", type="pil", format="png")
            swap_btn = gr.Button("Same z, every class (identity swap)")
            swap_gal = gr.Gallery(label="One z, all classes", columns=8, height="auto", format="png")

        with gr.Tab("Interpolate"):
            ends = []
            with gr.Row():
                for tag in ("A", "B"):
                    with gr.Column():
                        gr.Markdown(f"**Endpoint {tag}**: a class and seed, or upload a photo")
                        e_cls = gr.Dropdown(["auto (C decides)"] + names,
                                            value=names[0 if tag == "A" else min(1, len(names) - 1)],
                                            label=f"Class {tag} (auto: C's guess for a photo)", filterable=True)
                        e_seed = gr.Number(0 if tag == "A" else 1, label=f"Seed {tag}", precision=0, minimum=0)
                        e_img = gr.Image(label=f"Photo {tag} (optional)", type="pil", sources=["upload"])
                        ends += [e_cls, e_seed, e_img]
            with gr.Row():
                mode = gr.Radio(["z", "class", "both"], value="both", label="What changes")
                frames = gr.Slider(2, S.MAX_FRAMES, value=8, step=1, label="Frames")
            morph_btn = gr.Button("Interpolate", variant="primary")
            morph_gal = gr.Gallery(label="Frames", columns=8, height="auto", format="png")
            morph_gif = gr.File(label="Animated GIF")

        with gr.Tab("Inpaint"):
            gr.Markdown("Paint over the part to replace (any colour), pick the class or let C guess, then run.")
            with gr.Row():
                editor = gr.ImageEditor(label="Photo + mask", type="numpy", sources=["upload", "clipboard"],
                                        brush=gr.Brush(default_size=12, colors=["#ffffff", "#ff00ff"], color_mode="defaults"),
                                        eraser=gr.Eraser(default_size=12), layers=False, transforms=(), height=420,
                                        elem_id="inpaint-editor")
                with gr.Column():
                    in_cls = gr.Dropdown(["auto (C decides)"] + names, value="auto (C decides)", label="Class", filterable=True)
                    iters = gr.Slider(1, S.MAX_ITERATIONS, value=4, step=1, label="Iterations (encode-generate-paste)")
                    refine = gr.Slider(0, S.MAX_REFINE, value=0, step=10, label="Refinement steps (optimise z)")
                    inpaint_btn = gr.Button("Inpaint", variant="primary")
                    in_class = gr.Markdown()
            in_result = gr.ImageSlider(label="Before / after", type="pil", format="png")
            with gr.Accordion("Enhance: super-resolve a small photo", open=False):
                with gr.Row():
                    sr_in = gr.Image(label="Small photo (below the model resolution)", type="pil", sources=["upload"])
                    sr_out = gr.Image(label="Enhanced", type="pil", format="png")
                with gr.Row():
                    sr_cls = gr.Dropdown(["auto (C decides)"] + names, value="auto (C decides)", label="Class", filterable=True)
                    sr_steps = gr.Slider(10, S.MAX_SR_STEPS, value=100, step=10, label="Steps")
                    sr_btn = gr.Button("Enhance")
                sr_info = gr.Markdown()
            with gr.Accordion("Reconstruct: photo -> E -> G", open=False):
                with gr.Row():
                    rc_in = gr.Image(label="Photo", type="pil", sources=["upload"])
                    rc_out = gr.Image(label="Reconstruction", type="pil", format="png")
                with gr.Row():
                    rc_cls = gr.Dropdown(["auto (C decides)"] + names, value="auto (C decides)", label="Class", filterable=True)
                    rc_btn = gr.Button("Reconstruct")
                rc_info = gr.Markdown()

        with gr.Tab("About"):
            card = gr.Markdown(first.card)
            card_samples = gr.Image(first.samples_png, label="samples.png shipped with these weights (rows: classes, "
                                    "columns: seeds 0-7)", interactive=False, visible=first.samples_png is not None)
            gr.Markdown("### Cite the paper\n" + CITATION)

        # ---------------------------------------------------------------- events
        @ui_errors
        def on_model(choice):
            loaded = registry.get(choice)
            m = loaded.model
            n = m.config.class_names
            auto = ["auto (C decides)"] + n
            dd = gr.update(choices=n, value=n[0])
            auto_dd = gr.update(choices=auto, value=auto[0])
            return [status_text(loaded), dd, dd, gr.update(choices=auto, value=n[0]),
                    gr.update(choices=auto, value=n[min(1, len(n) - 1)]), auto_dd, auto_dd, auto_dd,
                    S.as_files([(t, c) for t, c in zip(loaded.thumbnails, n)]), loaded.card,
                    gr.update(value=loaded.samples_png, visible=loaded.samples_png is not None), *slider_updates(m)]
        model_dd.change(on_model, model_dd,
                        [status, cls, ex_cls, ends[0], ends[3], in_cls, sr_cls, rc_cls, thumbs, card, card_samples, *sliders],
                        api_name="select_model")
        demo.load(lambda: slider_updates(first.model), None, sliders, api_name="init_sliders")

        def pick_class(choice, evt: gr.SelectData):
            return model_of(choice).config.class_names[evt.index]
        thumbs.select(pick_class, model_dd, cls, api_name="pick_class", api_visibility="undocumented")  # needs a click

        @ui_errors
        def on_generate(choice, c, s, rnd, n, t):
            images, used = S.generate(model_of(choice), c, s, rnd, n, t)
            return S.as_files([(img, f"seed {used + i}") for i, img in enumerate(images)]), f"Seed used: **{used}**", used, images
        gen_btn.click(on_generate, [model_dd, cls, seed, randomize, count, truncation],
                      [gallery, seed_used, seed, last_images], api_name="generate", concurrency_limit=2)

        def send_to_inpaint(images):
            if not images:
                raise gr.Error("generate a sample first")
            path = S.as_files(images[0])
            return {"background": path, "layers": [], "composite": path}
        to_inpaint.click(send_to_inpaint, last_images, editor, api_name="send_to_inpaint")

        @ui_errors
        def on_explore(choice, c, s, t, *amounts):
            m = model_of(choice)
            return S.as_files(S.explore(m, c, s, t, dict(zip(m.config.directions, amounts))))
        gr.on([s.release for s in sliders] + [ex_cls.change, ex_seed.submit, ex_trunc.release], on_explore,
              [model_dd, ex_cls, ex_seed, ex_trunc, *sliders], ex_img, api_name="explore", concurrency_limit=2)
        reset.click(lambda choice: [gr.update(value=0) for _ in sliders], model_dd, sliders,
                    api_name="reset_sliders").then(on_explore, [model_dd, ex_cls, ex_seed, ex_trunc, *sliders], ex_img,
                                                   api_name="explore_after_reset")

        @ui_errors
        def on_swap(choice, s, t):
            return S.as_files(S.swap_grid(model_of(choice), s, t))
        swap_btn.click(on_swap, [model_dd, ex_seed, ex_trunc], swap_gal, api_name="swap", concurrency_limit=1)

        @ui_errors
        def on_morph(choice, ca, sa, ia, cb, sb, ib, md, nf):
            return S.as_files(S.interpolate(model_of(choice), (ca, sa, ia), (cb, sb, ib), md, nf))
        morph_btn.click(on_morph, [model_dd, *ends, mode, frames], [morph_gal, morph_gif],
                        api_name="interpolate", concurrency_limit=1)

        @ui_errors
        def on_inpaint(choice, value, c, k, rs, progress=gr.Progress()):
            before, after, text = S.inpaint(model_of(choice), value, c, k, rs,
                                            progress=lambda f, d: progress(f, desc=d))
            return S.as_files((before, after)), f"Class used: **{text}**"
        inpaint_btn.click(on_inpaint, [model_dd, editor, in_cls, iters, refine], [in_result, in_class],
                          api_name="inpaint", concurrency_limit=2)

        @ui_errors
        def on_enhance(choice, img, c, n, progress=gr.Progress()):
            return S.as_files(S.enhance(model_of(choice), img, c, n, progress=lambda f, d: progress(f, desc=d)))
        sr_btn.click(on_enhance, [model_dd, sr_in, sr_cls, sr_steps], [sr_out, sr_info], api_name="enhance",
                     concurrency_limit=1)

        @ui_errors
        def on_reconstruct(choice, img, c):
            out, text = S.reconstruct(model_of(choice), img, c)
            return S.as_files(out), f"Class used: **{text}**"
        rc_btn.click(on_reconstruct, [model_dd, rc_in, rc_cls], [rc_out, rc_info], api_name="reconstruct",
                     concurrency_limit=2)

        examples = sorted(EXAMPLES_DIR.glob(f"{registry.default}_*_image.png")) if registry.default in S.bundled_names() else []
        if examples:
            rows = [[{"background": str(p), "layers": [str(p.with_name(p.name.replace("_image", "_mask")))],
                      "composite": None}, "auto (C decides)", 4, 0] for p in examples]
            gr.Examples(rows, [editor, in_cls, iters, refine], [in_result, in_class],
                        fn=lambda v, c, k, rs: on_inpaint(registry.default, v, c, k, rs),
                        cache_examples=True, cache_mode="lazy", label="Examples (generated by the model)",
                        api_name="inpaint_example")
    return demo


registry = S.ModelRegistry(os.environ.get("CVAEGAN_WEIGHTS"))
demo = build_demo(registry)
demo.queue(default_concurrency_limit=2, max_size=64)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="CVAE-GAN Gradio demo")
    ap.add_argument("--weights", default=None, help="extra weights folder or Hub repo id owner/name (also CVAEGAN_WEIGHTS)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port")
    args = ap.parse_args()
    if args.weights:
        registry = S.ModelRegistry(args.weights)
        demo = build_demo(registry)
        demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size="10mb", show_error=True)
