"""What the demo does, without any UI: loads each model once and turns validated request values into
images. app.py (Gradio) only wires these functions to widgets; tests call them directly."""

from __future__ import annotations

import base64
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import blend, enrol as EN, inference as I
from .card import THUMBNAILS, sheet_file
from .hub import BUNDLED_DIR, BUNDLED_ORDER, CONFIG_NAME, Resolved, resolve_weights
from .images import ImageError, open_image, open_mask, psnr, save_png, to_pil
from .models import CVAEGAN
from .seeds import MAX_SEED, check_seed, z_from_seeds
from .serialization import WeightsError

MAX_SAMPLES = 16  # images per Generate request
# The app's starting truncation (z scale) for Generate and Explore. On the bundled faces weights (judge faces64,
# 1,024 samples each; README, Evaluation) the judge names the right person in 13% of samples at 1.0 (the paper's
# N(0, I)), 22% at 0.7 and 30% at 0.5, while FID in judge space rises 11 -> 16 -> 21 and diversity falls: 0.7 shows
# the chosen person more clearly and keeps variety; the slider still reaches 1.0 and beyond.
DEFAULT_TRUNCATION = 0.7
MAX_FRAMES = 32  # interpolation frames per request
MAX_ITERATIONS = 20  # inpainting rounds per request
DEFAULT_ITERATIONS = blend.DEFAULT_ITERATIONS  # the Inpaint tab's default (what `cvaegan evaluate` measures)
MAX_REFINE = 200  # z-refinement steps per request
MAX_SR_STEPS = 300
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"  # next to the package, never the cwd
EDIT_PX = 256  # a generated sample is sent to the inpainting canvas at least this large
AUTO = "auto (guessed from the photo)"  # by C, or for inpainting by the class guesser when the weights have one


DIRECTION_LABELS = {  # friendlier slider names for the attribute columns of the faces pack
    "attr_yaw": "head turn",
    "attr_pitch": "head tilt",
    "attr_mouth_open": "mouth open",
    "attr_smile": "smile (mouth width)",
    "attr_eye_open": "eyes open",
    "attr_brightness": "brightness",
    "attr_light_lr": "lighting left/right",
}
DIRECTION_PLUS = {  # what + does, from the attribute definitions of the data (see the data set's README)
    "attr_yaw": "turns towards the picture's right",
    "attr_pitch": "tilts down",
    "attr_mouth_open": "opens",
    "attr_smile": "widens",
    "attr_eye_open": "opens",
    "attr_brightness": "brighter",
    "attr_light_lr": "more light on the picture's right",
}
# unnamed classes such as "celeba_07201": readable picker labels ("Person 3 (CelebA 07201)")
SOURCE_NAMES = {
    "celeba": ("Person", "CelebA"),
    "lfw": ("Person", "LFW"),
    "vggface2": ("Person", "VGGFace2"),
    "casia": ("Person", "CASIA"),
}


# ------------------------------------------------------------------ result files
# The demo hands every result image to Gradio as a PNG file of its own rather than as a PIL image.
# Gradio 6 caches a PIL result under a name derived from its bytes and writes it there with a plain
# truncating write, so two users who ask for the same sample at the same moment can be served a file
# that is being rewritten (seen in our 16-client load test: "received 0 bytes, expected 3172").
# A file path is instead copied into Gradio's cache under a temporary name and renamed into place.
OUTPUT_TTL_S = 900  # result files older than this are deleted (Gradio has copied them long before)
_out_lock = threading.Lock()
_out_dir: Path | None = None
_last_sweep = 0.0


def output_dir() -> Path:
    """This process's private folder for result files (created on first use, under the temp dir)."""
    global _out_dir
    with _out_lock:
        if _out_dir is None or not _out_dir.is_dir():
            _out_dir = Path(tempfile.mkdtemp(prefix="cvaegan-results-"))
        return _out_dir


def sweep_outputs(now: float | None = None, force: bool = False) -> int:
    """Delete result files older than OUTPUT_TTL_S (at most once a minute unless forced); returns how many."""
    global _last_sweep
    now = time.time() if now is None else now
    with _out_lock:
        if not force and now - _last_sweep < 60:
            return 0
        _last_sweep = now
    removed = 0
    for f in output_dir().iterdir():
        try:
            if now - f.stat().st_mtime > OUTPUT_TTL_S:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
                removed += 1
        except OSError:  # already gone (another thread's sweep)
            pass
    return removed


def output_path(suffix: str, name: str | None = None) -> str:
    """A fresh, unique file path for one result; with `name`, a unique folder holding that readable file name."""
    sweep_outputs()
    if name is None:
        return str(output_dir() / f"{uuid.uuid4().hex}{suffix}")
    folder = output_dir() / uuid.uuid4().hex
    folder.mkdir()
    return str(folder / (re.sub(r"[^\w.-]+", "_", name).strip("_") + suffix))


def as_files(value):
    """Every PIL image inside a handler's result (nested in lists, tuples, dicts) -> path of a PNG."""
    if isinstance(value, Image.Image):
        path = output_path(".png")
        save_png(value, path)
        return path
    if isinstance(value, (list, tuple)):
        return type(value)(as_files(v) for v in value)
    if isinstance(value, dict):
        return {k: as_files(v) for k, v in value.items()}
    return value


def direction_label(name: str) -> str:
    """Slider label of a saved direction: "pc3" -> "principal direction 3", "attr_smile" -> "smile (mouth width)"."""
    if name in DIRECTION_LABELS:
        return DIRECTION_LABELS[name]
    if name.startswith("pc") and name[2:].isdigit():
        return f"principal direction {name[2:]}"
    return name.removeprefix("attr_").replace("_", " ")


def direction_hint(name: str) -> str:
    """Slider label with the meaning of +: "head turn (+ turns towards the picture's right)"."""
    label = direction_label(name)
    if name in DIRECTION_PLUS:
        return f"{label} (+ {DIRECTION_PLUS[name]})"
    if name.startswith("pc") and name[2:].isdigit():
        return label
    return f"{label} (+ = more)"


def class_display_names(model: CVAEGAN) -> list[str]:
    """A readable picker label per class: names such as "celeba_07201" become "Person 1 (CelebA 07201)"
    (numbered in class order among the unnamed ones); real names are kept."""
    out, counts = [], {}
    for name in model.config.class_names:
        m = re.fullmatch(r"([A-Za-z]+)[_-](\d+)", name)
        if m is None:
            out.append(name)
            continue
        kind, source = SOURCE_NAMES.get(m.group(1).lower(), ("Class", m.group(1)))
        counts[kind] = counts.get(kind, 0) + 1
        out.append(f"{kind} {counts[kind]} ({source} {m.group(2)})")
    return out


def class_choices(model: CVAEGAN, auto: bool = False) -> list[tuple[str, str]]:
    """Dropdown choices (label, value): the value stays the class name the API takes."""
    pairs = list(zip(class_display_names(model), model.config.class_names))
    return ([(AUTO, AUTO)] if auto else []) + pairs


def display_name(model: CVAEGAN, idx: int) -> str:
    return class_display_names(model)[idx]


def bundled_names() -> list[str]:
    """Names of the bundled weights folders present in weights/ (faces, flowers, birds order)."""
    present = [n for n in BUNDLED_ORDER if (BUNDLED_DIR / n / CONFIG_NAME).is_file()]
    others = sorted(p.name for p in BUNDLED_DIR.glob("*") if (p / CONFIG_NAME).is_file() and p.name not in present)
    return present + others


@dataclass
class Loaded:
    """A model ready to serve, with what the UI shows about it."""

    resolved: Resolved
    thumbnails: list[Image.Image] = field(default_factory=list)
    card: str = ""
    enrolled: list[EN.EnrolledClass] = field(default_factory=list)  # classes added in this process ("Add your own")
    _discriminator: tuple | None = field(default=None, repr=False)  # (D or None, why not) once looked up

    def discriminator(self) -> tuple[torch.nn.Module | None, str]:
        """D of these weights for "Add your own" (loaded on first use and kept; not part of the served model),
        or None and why not."""
        if self._discriminator is None:
            self._discriminator = enrol_discriminator(self.model)
        return self._discriminator

    @property
    def samples_png(self) -> str | None:
        """Path of the sample grid shipped with the weights, if any."""
        src = self.resolved.model.source
        p = Path(src) / "samples.png" if src and Path(src).is_dir() else None
        return str(p) if p is not None and p.is_file() else None

    @property
    def model(self) -> CVAEGAN:
        return self.resolved.model


class ModelRegistry:
    """Loads each choice once (thread-safe) and keeps it. Choices: bundled data sets + an extra
    weights folder or Hub repo id (from --weights / CVAEGAN_WEIGHTS)."""

    def __init__(self, extra: str | None = None, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.extra = extra or None
        self.choices = ([self.extra] if self.extra else []) + bundled_names()
        if not self.choices:
            raise FileNotFoundError(f"no weights to show: {BUNDLED_DIR} is empty and no --weights was given")
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> str:
        return self.choices[0]

    def get(self, choice: str | None) -> Loaded:
        choice = choice or self.default
        if choice not in self.choices:
            raise ValueError(f"unknown model {choice!r}; choose one of {self.choices}")
        with self._lock:
            if choice not in self._loaded:
                spec = choice if choice == self.extra else str(BUNDLED_DIR / choice)
                res = resolve_weights(spec, device=self.device, fallback=True)
                if choice != self.extra:
                    res.source = f"bundled weights/{choice}"
                self._loaded[choice] = Loaded(res, _thumbnails(res.model), _card(res.model))
            return self._loaded[choice]


def _thumbnails(model: CVAEGAN) -> list[Image.Image]:
    """One picture per class for the picker: the thumbnails sheet shipped with the weights when present
    (thumbnails.jpg, or thumbnails.png of older folders: one cell per class in index order), otherwise
    generated with seed 0."""
    r = model.config.resolution
    sheet = sheet_file(model.source, THUMBNAILS)
    if sheet is not None:
        img = Image.open(sheet).convert("RGB")
        cols = img.width // r
        if cols and (img.height // r) * cols >= model.config.num_classes:
            return [
                img.crop(((i % cols) * r, (i // cols) * r, (i % cols + 1) * r, (i // cols + 1) * r))
                for i in range(model.config.num_classes)
            ]
    return [to_pil(t) for t in I.class_samples(model)]


def _card(model: CVAEGAN) -> str:
    """The weights' model card as Markdown for the About tab: front matter dropped, pictures of the weights
    folder inlined (data URIs, so they show whatever the working directory), other picture links dropped,
    empty table header rows named."""
    folder = Path(model.source) if model.source and Path(model.source).is_dir() else None
    p = folder / "README.md" if folder is not None else None
    if p is not None and p.is_file():
        text = p.read_text(encoding="utf-8")
        if text.startswith("---"):  # drop YAML front matter
            end = text.find("\n---", 3)
            text = text[end + 4 :] if end > 0 else text

        def picture(m: re.Match) -> str:
            alt, target = m.group(1), m.group(2).strip()
            f = (folder / target).resolve()
            if "/" in target or "\\" in target or not f.is_file() or f.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                return ""  # only pictures shipped in the weights folder itself
            kind = "png" if f.suffix.lower() == ".png" else "jpeg"
            return f"\n\n![{alt}](data:image/{kind};base64,{base64.b64encode(f.read_bytes()).decode()})\n\n"

        text = re.sub(r"!\[([^\]]*)\]\(([^)]*)\)", picture, text)
        text = re.sub(r"(?m)^\|(\s*\|){2}\s*$", "| item | value |", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()
    c = model.config
    return (
        f"No model card was shipped with these weights.\n\n{c.num_classes} classes, "
        f"{c.resolution}x{c.resolution} px, z_dim {c.z_dim}."
    )


# ------------------------------------------------------------------ request values


def parse_seed(seed, randomize: bool = False) -> int:
    """The seed to use: a fresh random one when `randomize`, else the validated given seed."""
    if randomize:
        return secrets.randbelow(2**31)
    if seed is None or seed == "":
        raise ValueError("enter a seed (a whole number from 0) or tick 'randomize'")
    return check_seed(seed)


def parse_number(value, name: str, lo: float, hi: float, integer: bool = False) -> float:
    """A finite number within [lo, hi] (NaN, infinities and out-of-range values refused)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    if integer:
        if not v.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(v)
    return v


def class_choice(model: CVAEGAN, cls) -> int | None:
    """Dropdown value -> class index; None for 'auto' (let C decide)."""
    if cls is None or cls == "" or (isinstance(cls, str) and cls.lower().startswith("auto")):
        return None
    return model.config.class_index(cls)


def class_label(model: CVAEGAN, idx: int, prob: float | None, source: str = "C") -> str:
    """The class's name, with whose guess it was (source: "C" or `inference.guess_source`) and its probability."""
    name = model.config.class_names[idx]
    return f"{name} ({source}'s guess, p = {prob:.2f})" if prob is not None else name


def top_text(model: CVAEGAN, top: list[tuple[int, float]], source: str = "C") -> str:
    """The top guesses of `source` ("C" or `inference.guess_source`) as one line, saying when none is confident."""
    names = class_display_names(model)
    who = source[:1].upper() + source[1:]
    text = f"{who}'s guesses: " + ", ".join(f"{names[i]} (p = {p:.2f})" for i, p in top)
    if top and top[0][1] < blend.CONFIDENT:
        text += (
            f". {who} {'are' if ' and ' in source else 'is'} not confident (no class reaches p = {blend.CONFIDENT:.1f}): "
            "the photo may show none of this model's classes; pick the class yourself if you know it"
        )
    return text


def upscale(img: Image.Image, at_least: int = EDIT_PX) -> Image.Image:
    """A smoothly upscaled copy (Lanczos) whose short side is at least `at_least` px (never shrunk)."""
    f = math.ceil(at_least / min(img.size))
    return img if f <= 1 else img.resize((img.width * f, img.height * f), Image.LANCZOS)


# ------------------------------------------------------------------ requests


def generate(
    model: CVAEGAN, cls, seed, randomize: bool, count, truncation, near_photos: bool = False
) -> tuple[list[Image.Image], int]:
    """`count` images of a class with seeds seed, seed+1, ...; returns (images, first seed used).
    near_photos: a class added from photos samples z near its photos' codes (inference.sample's prior
    "photos"); trained classes are unaffected."""
    idx = model.config.class_index(cls)
    s = parse_seed(seed, randomize)
    n = parse_number(count, "number of samples", 1, MAX_SAMPLES, integer=True)
    t = parse_number(truncation, "truncation", 0.0, 2.0)
    if s + n - 1 > MAX_SEED:
        raise ValueError(f"seed too large: seeds {s}..{s + n - 1} pass {MAX_SEED}")
    prior = "photos" if near_photos else "standard"
    return [to_pil(x) for x in I.sample(model, idx, list(range(s, s + n)), t, prior=prior)], s


def explore(model: CVAEGAN, cls, seed, truncation, amounts: dict[str, float]) -> Image.Image:
    """One image of (class, seed) moved along the latent directions by `amounts` (name -> amount)."""
    idx = model.config.class_index(cls)
    z = z_from_seeds([parse_seed(seed)], model.config.z_dim, parse_number(truncation, "truncation", 0.0, 2.0))[0]
    clean = {k: parse_number(v, f"slider {k}", -10, 10) for k, v in amounts.items()}
    z = I.edit(model, z, clean)
    return to_pil(I.generate(model, z[None], torch.tensor([idx]))[0])


def explore_pair(
    model: CVAEGAN, cls, seed, truncation, photo, amounts: dict[str, float]
) -> tuple[Image.Image, Image.Image, str]:
    """(unedited, edited, note) for a (class, seed) sample or, when `photo` is given, for E's code of the
    photo under that class (the class picked by C when cls is 'auto')."""
    clean = {k: parse_number(v, f"slider {k}", -10, 10) for k, v in amounts.items()}
    if photo is None:
        idx = model.config.class_index(cls)
        z = z_from_seeds([parse_seed(seed)], model.config.z_dim, parse_number(truncation, "truncation", 0.0, 2.0))[0]
        note = f"{display_name(model, idx)}, seed {parse_seed(seed)}"
    else:
        z, idx, prob = I.encode(
            model, I.as_model_input(model, open_image(photo, name="photo")), class_choice(model, cls)
        )
        note = f"E's code of your image as {display_name(model, idx)}" + (
            f" (C's guess, p = {prob:.2f})" if prob else ""
        )
    c = torch.tensor([idx, idx])
    x = I.generate(model, torch.stack([z, I.edit(model, z, clean)]), c, batch_size=1)
    return to_pil(x[0]), to_pil(x[1]), note


def swap_grid(model: CVAEGAN, seed, truncation, limit: int = 300) -> list[tuple[Image.Image, str]]:
    """The same z rendered as every class (up to `limit`), captioned with the class names."""
    z = z_from_seeds([parse_seed(seed)], model.config.z_dim, parse_number(truncation, "truncation", 0.0, 2.0))[0]
    k = min(limit, model.config.num_classes)
    x = I.generate(model, z[None].expand(k, -1), torch.arange(k), batch_size=1)
    return [(to_pil(t), model.config.class_names[i]) for i, t in enumerate(x)]


def _endpoint(model: CVAEGAN, cls, seed, image, prior: str = "standard") -> tuple[torch.Tensor, int]:
    if image is not None:
        return I.endpoint(model, class_choice(model, cls), image=image)
    idx = class_choice(model, cls)
    if idx is None:
        raise ValueError("each endpoint needs a class (or an uploaded photo)")
    return I.endpoint(model, idx, parse_seed(seed), prior=prior)


def interpolate(
    model: CVAEGAN, a: tuple, b: tuple, mode: str, frames, near_photos: bool = False
) -> tuple[list[Image.Image], str]:
    """a, b: (class, seed, image or None). Returns (frames, path of an animated GIF).
    near_photos: a (class, seed) endpoint of a class added from photos takes its z near the photos' codes
    (as in generate); trained classes and photo endpoints are unaffected."""
    n = parse_number(frames, "frames", 2, MAX_FRAMES, integer=True)
    if mode not in ("z", "class", "both"):
        raise ValueError(f"mode must be z, class or both, got {mode!r}")
    prior = "photos" if near_photos else "standard"
    (za, ca), (zb, cb) = _endpoint(model, *a, prior=prior), _endpoint(model, *b, prior=prior)
    x = I.interpolate(model, (za, ca), (zb, cb), n, mode)
    names = model.config.class_names
    path = output_path(".gif", f"interpolation_{names[ca]}_to_{names[cb]}_{n}_frames")
    I.save_gif(x, path)
    return [to_pil(t) for t in x], path


def editor_to_image_and_mask(value) -> tuple[Image.Image, np.ndarray]:
    """A gr.ImageEditor value (dict with background, layers, composite) -> (RGB photo, (H, W) bool mask).

    Anything painted on any layer (alpha > 0) is a pixel to fill."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise ImageError("upload a photo (or send a generated image) to the canvas first")
    bg = value["background"]
    photo = open_image(bg if not isinstance(bg, (str, os.PathLike)) else Path(bg), name="canvas")
    mask = np.zeros((photo.height, photo.width), bool)
    for n, layer in enumerate(value.get("layers") or []):
        if layer is None:
            continue
        # editor layers are RGBA (painted = alpha > 0); files, bytes and other images go through
        # open_mask, which also reads black/white and grey masks and reports broken files clearly
        if isinstance(layer, (str, os.PathLike)):
            layer = Path(layer)
        painted = open_mask(layer, (photo.width, photo.height), name=f"mask layer {n + 1}")
        mask |= painted
    return photo, mask


def _inpaint(model: CVAEGAN, editor_value, cls, iterations, refine_steps, progress=None):
    photo, mask = editor_to_image_and_mask(editor_value)
    if not mask.any():
        raise ValueError("paint over the part of the photo to fill in first (the mask is empty)")
    k = parse_number(iterations, "iterations", 1, MAX_ITERATIONS, integer=True)
    rs = parse_number(refine_steps, "refinement steps", 0, MAX_REFINE, integer=True)
    r = blend.inpaint(model, photo, mask, class_choice(model, cls), k, rs, progress=progress)
    before = np.asarray(photo).copy()
    before[mask] = (before[mask] * 0.35 + np.array([255, 0, 255]) * 0.65).astype(np.uint8)  # show the hole
    return Image.fromarray(before), r


def inpaint(
    model: CVAEGAN, editor_value, cls, iterations, refine_steps, progress=None
) -> tuple[Image.Image, Image.Image, str]:
    """(before with the hole shown, after, class text) for a painted canvas, inpainted at the photo's own
    resolution with a seamless blend (cvaegan.blend). Class text: "name" or "name (C's guess, p = 0.42)" (the class
    guesser's, when the weights have one)."""
    before, r = _inpaint(model, editor_value, cls, iterations, refine_steps, progress)
    prob = r["top"][0][1] if r["top"] else None
    return before, r["image"], class_label(model, r["class"], prob, I.guess_source(model))


def inpaint_full(
    model: CVAEGAN, editor_value, cls, iterations, refine_steps, progress=None
) -> tuple[Image.Image, Image.Image, str]:
    """As inpaint, with the class's display name and, for 'auto', the guess's top-3 (and whether it is confident)."""
    before, r = _inpaint(model, editor_value, cls, iterations, refine_steps, progress)
    text = display_name(model, r["class"]) + (
        f". {top_text(model, r['top'], I.guess_source(model))}" if r["top"] else ""
    )
    return before, r["image"], text


def examples_for(name: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs shipped in examples/ for a bundled model name ("faces_0_image.png", "faces_0_mask.png")."""
    pairs = []
    for img in sorted(EXAMPLES_DIR.glob(f"{name}_*_image.png")):
        mask = img.with_name(img.name.replace("_image.png", "_mask.png"))
        if mask.is_file():
            pairs.append((img, mask))
    return pairs


def editor_value(image, mask=None) -> dict:
    """A gr.ImageEditor value for a photo (any image; small ones are upscaled to EDIT_PX so that the
    brush fits) and an optional mask (any mask image or bool array), drawn as a translucent magenta layer."""
    photo = open_image(image, name="image")
    big = upscale(photo)
    layers = []
    if mask is not None:
        m = open_mask(mask if not isinstance(mask, (str, os.PathLike)) else Path(mask), big.size, name="mask")
        rgba = np.zeros((big.height, big.width, 4), np.uint8)
        rgba[m] = (255, 0, 255, 200)
        layers.append(Image.fromarray(rgba, "RGBA"))
    composite = big.copy()
    for layer in layers:
        composite.paste(layer, (0, 0), layer)
    return as_files({"background": big, "layers": layers, "composite": composite})


def enhance(model: CVAEGAN, image, cls, steps, progress=None) -> tuple[Image.Image, str]:
    if image is None:
        raise ImageError("upload a small photo first")
    n = parse_number(steps, "steps", 1, MAX_SR_STEPS, integer=True)
    r = I.superresolve(model, image, class_choice(model, cls), n, progress=progress)
    return r["image"], (
        f"{r['input_size'][0]}x{r['input_size'][1]} -> {model.config.resolution} px; "
        f"PSNR of the downsampled result vs your photo: {r['psnr']:.1f} dB; "
        f"class: {class_label(model, r['class'], r['probability'])}"
    )


def reconstruct(model: CVAEGAN, image, cls, refine_steps=0, progress=None) -> tuple[Image.Image, str, float]:
    """(reconstruction, class text, PSNR in dB against the photo at model resolution) for an uploaded photo;
    refine_steps (0 to MAX_REFINE) optimise E's code on the photo's pixels first (`inference.refine_codes`)."""
    if image is None:
        raise ImageError("upload a photo first")
    rs = parse_number(refine_steps, "refinement steps", 0, MAX_REFINE, integer=True)
    x_in = I.as_model_input(model, open_image(image, name="photo"))  # decoded once: reconstructed and compared
    x, idx, prob = I.reconstruct(model, x_in, class_choice(model, cls), rs, progress=progress)
    likeness = float(psnr(x[None], x_in.cpu())[0])
    return to_pil(x), class_label(model, idx, prob), likeness


# ------------------------------------------------------------------ add your own class (enrolment)
ENROL_STEPS = EN.DEFAULT_STEPS  # learning steps per enrolment in the app (tests lower it)
_enrol_lock = threading.Lock()  # one enrolment grows a model at a time


def upload_paths(files) -> list:
    """Gradio File / Gallery upload values -> what enrol() takes: paths (a (path, caption) pair, a dict with
    "path" or a FileData-like object give their path); PIL images and bytes pass through."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike, Image.Image, bytes)):
        files = [files]
    out = []
    for f in files:
        if isinstance(f, (tuple, list)) and f:
            f = f[0]
        if isinstance(f, dict):  # FileData as a dict, or a gallery item {"image": FileData, "caption": ...}
            f = f.get("image", f)
            f = f.get("path") or f.get("name") if isinstance(f, dict) else f
        elif not isinstance(f, (str, os.PathLike, Image.Image, bytes, np.ndarray)) and hasattr(f, "path"):
            f = f.path
        if f is None:
            continue
        out.append(str(f) if isinstance(f, os.PathLike) else f)
    return out


def _class_thumbnail(model: CVAEGAN, idx: int, seed: int = 0, truncation: float = 0.7) -> Image.Image:
    """The picker picture of one class, drawn like inference.class_samples draws them (same z for every class)."""
    z = z_from_seeds([seed], model.config.z_dim, truncation)
    return to_pil(I.generate(model, z, torch.tensor([idx]))[0])


def enrol_discriminator(model: CVAEGAN) -> tuple[torch.nn.Module | None, str]:
    """(D, "") from the folder the served weights came from, so the app enrols with the loss `cvaegan enrol` and
    the enrolment experiment use (README, Add a new person or species); (None, why) when the weights carry no D
    or it cannot be read: enrolment then goes on without D's features and says so."""
    if model.discriminator is not None:
        return model.discriminator, ""
    try:
        d = model.load_discriminator()
    except WeightsError as e:
        return None, f"D's features were not used: {e}"
    return d, "" if d is not None else "these weights carry no discriminator, so D's features were not used"


def enrol_class(
    target: Loaded | CVAEGAN, files, name, progress=None, steps: int | None = None, seed: int = 0
) -> tuple[str, Image.Image, str]:
    """Learn a new class from 3-50 uploaded photos and add it to the served model (in place, under a lock).

    target: a Loaded from the registry (its thumbnails and enrolled list follow) or a bare model.
    Returns (the new class name, a before/after sheet: photos over samples with seeds 0-7, a status text).
    EnrolError (a ValueError) for an empty or taken name, fewer than 3 photos, a broken file."""
    loaded = target if isinstance(target, Loaded) else None
    model = loaded.model if loaded is not None else target
    paths = upload_paths(files)
    n = ENROL_STEPS if steps is None else parse_number(steps, "steps", 1, 2000, integer=True)
    EN.check_name(model, name)  # a clear error before the photos are read
    t0 = time.perf_counter()

    def report(f, msg):
        if progress is not None:
            progress(0.95 * f, msg)

    disc, no_disc = loaded.discriminator() if loaded is not None else enrol_discriminator(model)
    cls = EN.enrol(model, paths, name, steps=n, seed=seed, progress=report, discriminator=disc)
    if progress is not None:
        progress(0.97, "adding the class to the model")
    with _enrol_lock:
        idx = EN.add_classes(model, [cls])[0]
        if loaded is not None:
            loaded.enrolled.append(cls)
            thumbs = loaded.thumbnails[:idx] + [_class_thumbnail(model, idx)]
            loaded.thumbnails = thumbs + loaded.thumbnails[idx + 1 :]
    photos = EN.load_photos(paths, model.config.resolution)
    sheet = EN.before_after(model, photos, cls.name)
    info = cls.info
    text = (
        f"Added **{cls.name}** from {info['photos']} photos in {time.perf_counter() - t0:.0f} s "
        f"(started from {info['init_from']}; reconstruction {info['recon_psnr_db_before']:.1f} -> "
        f"{info['recon_psnr_db_after']:.1f} dB; C recognises {info['c_top1_samples']:.0%} of its samples). "
        "It is selected in every class picker of this model until the app restarts. Top row: your photos "
        "as the model sees them; below: samples with seeds 0-7, then the same seeds near your photos (tick "
        "'Classes added from photos: sample near their photos' in Generate for those)."
    )
    notes = cls.warnings + ([no_disc] if no_disc else [])
    if notes:
        text += "\n\n" + "\n".join(f"- Note: {w}" for w in notes)
    return cls.name, sheet, text
