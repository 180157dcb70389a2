"""Which weights to use: a local folder, a Hub repo or the bundled weights/ (one resolver for CLI and
app), and publishing a folder to the Hub. Saving and loading themselves live in CVAEGAN (models.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .models import CVAEGAN, DIRECTIONS_NAME
from .serialization import CONFIG_NAME, WeightsError, load_tensors, unwrap_state, verify_files

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_ORDER",
    "CONFIG_NAME",
    "DIRECTIONS_NAME",
    "Resolved",
    "WeightsError",
    "bundled",
    "load_folder",
    "load_pretrained",
    "model_card",
    "push",
    "read_config",
    "resolve_weights",
    "save_directions",
    "save_pretrained",
]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
BUNDLED_ORDER = ("faces", "flowers", "birds")
RUNNING_MEANS_NAME = "running_means.safetensors"


def save_pretrained(
    model: CVAEGAN,
    path: str | os.PathLike,
    fp16: bool = True,
    include_discriminator: bool = False,
    running_means: torch.nn.Module | None = None,
) -> Path:
    """model.save_pretrained(...): config.json + encoder/generator/classifier[/discriminator].safetensors.

    With include_discriminator and running_means (the trainer's feature means of L_GD / L_GC), the folder
    also carries everything `train --init-from` needs to go on training, except optimiser state.
    """
    extra = None
    if running_means is not None:
        means = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in unwrap_state(running_means).items()}
        extra = {RUNNING_MEANS_NAME: means}
    return model.save_pretrained(path, fp16=fp16, include_discriminator=include_discriminator, extra=extra)


def load_training_state(folder: str | os.PathLike) -> dict:
    """What `train --init-from FOLDER` starts from: {"config": model config dict, "nets": {C, D, G, E: tensors},
    "means": running-mean tensors, "source", "val_fraction", "trained_before", "training": the recorded recipe or
    None}. The files are hash-checked; the trainer loads them strictly."""
    folder = Path(folder)
    cfg = read_config(folder)
    verify_files(folder, cfg.files)
    missing = [f for f in ("discriminator.safetensors", RUNNING_MEANS_NAME) if not (folder / f).is_file()]
    if missing:
        raise WeightsError(
            f"{folder}: no {' or '.join(missing)}; only weights exported with the discriminator and "
            "running means (`train --export-discriminator`, the default) can be trained further"
        )
    nets = {
        key: load_tensors(folder / f"{name}.safetensors")
        for key, name in (("C", "classifier"), ("D", "discriminator"), ("G", "generator"), ("E", "encoder"))
    }
    return {
        "config": cfg.to_dict(),
        "nets": nets,
        "means": load_tensors(folder / RUNNING_MEANS_NAME),
        "source": str(folder),
        "val_fraction": held_out_fraction(folder),
        "trained_before": training_so_far(folder),
        "training": recorded_recipe(folder),
    }


def _release_figures(folder: str | os.PathLike) -> dict:
    """The weights folder's figures.json (written by `release`), {} when absent or unreadable: the loader
    reports a broken folder on its own, and these figures only inform a warm start."""
    try:
        figures = json.loads((Path(folder) / "figures.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return figures if isinstance(figures, dict) else {}


def held_out_fraction(folder: str | os.PathLike) -> float:
    """The fraction of each class the weights' training held out (figures.json, written by `release`), 0 if
    unknown. A warm start keeps it, so that the photos the weights are measured on stay unseen."""
    figures = _release_figures(folder)
    try:
        return float(figures.get("val_fraction") or 0.0) if figures.get("split") == "held-out" else 0.0
    except (TypeError, ValueError):
        return 0.0


def recorded_recipe(folder: str | os.PathLike) -> dict | None:
    """The recipe the weights in FOLDER were trained with (figures.json "training", config.recipe_options of the
    run, written by `release`); None for weights released before it was recorded."""
    training = _release_figures(folder).get("training")
    return training if isinstance(training, dict) else None


TRAINING_TOTAL_KEYS = ("steps", "cpu_min", "wall_min", "images")  # figures.json's training_total


def training_so_far(folder: str | os.PathLike) -> dict | None:
    """All the training the weights in FOLDER had (figures.json, written by `release`): {"steps", "cpu_min",
    "wall_min", "images"}, counting the weights they were warm-started from too when those were recorded;
    None when unknown (no figures.json, or one from before the training clock)."""
    figures = _release_figures(folder)
    total = figures.get("training_total")
    if not isinstance(total, dict):
        clock, steps = figures.get("clock"), figures.get("steps")
        if not isinstance(clock, dict) or not isinstance(steps, int):
            return None
        total = {"steps": steps, **clock}
    try:
        return {k: (int if k in ("steps", "images") else float)(total[k]) for k in TRAINING_TOTAL_KEYS}
    except (KeyError, TypeError, ValueError):
        return None


def save_directions(model: CVAEGAN, path: str | os.PathLike) -> None:
    """Add (or replace) the latent directions of an existing weights folder; network files stay as they are."""
    model.save_directions(path)


def read_config(folder: str | os.PathLike) -> ModelConfig:
    return CVAEGAN.read_config(folder)


def load_folder(
    folder: str | os.PathLike, device: str | torch.device = "cpu", with_discriminator: bool = False, verify: bool = True
) -> CVAEGAN:
    """Load a local weights folder strictly; networks in eval mode, float32, on `device`.
    verify=False skips the sha256 check (only for folders just downloaded and verified)."""
    return CVAEGAN.from_folder(folder, device, verify=verify, with_discriminator=with_discriminator)


def load_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    with_discriminator: bool = False,
    cache_dir: str | None = None,
    endpoint: str | None = None,
    extra_classes=None,
) -> CVAEGAN:
    """A local weights folder, or a Hub repo id ("owner/name", optional revision) -> CVAEGAN.
    extra_classes: class file(s) written by `cvaegan enrol`, added after loading (checked against these weights)."""
    model = CVAEGAN.from_pretrained(
        name_or_path,
        revision=revision,
        device=device,
        cache_dir=cache_dir,
        endpoint=endpoint,
        with_discriminator=with_discriminator,
    )
    if extra_classes:
        from .enrol import load_extra_classes  # enrol builds on models; models never imports it

        load_extra_classes(model, extra_classes)
    return model


@dataclass
class Resolved:
    model: CVAEGAN
    source: str  # human-readable: which weights, from where
    notice: str = ""  # non-empty when the requested weights could not be used and a fallback was


def bundled(name: str | None = None) -> Path:
    """Path of a bundled weights folder (weights/<name>); the first available one when name is None."""
    if name is not None:
        return BUNDLED_DIR / name
    for n in BUNDLED_ORDER:
        if (BUNDLED_DIR / n / CONFIG_NAME).is_file():
            return BUNDLED_DIR / n
    raise WeightsError(f"no bundled weights found in {BUNDLED_DIR}; pass --weights DIR_OR_REPO")


def resolve_weights(
    spec: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    fallback: bool = True,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> Resolved:
    """The one resolver: explicit folder -> Hub repo id (cache first) -> bundled weights/.

    spec None (or "") uses the bundled weights. With fallback=True, a Hub or folder failure falls
    back to the bundled weights and says so in `notice`; with fallback=False it raises.
    """
    if spec:
        if spec in BUNDLED_ORDER and not Path(spec).exists():
            spec = str(bundled(spec))
        try:
            model = load_pretrained(spec, revision=revision, device=device, endpoint=endpoint, cache_dir=cache_dir)
            kind = "Hub" if model.source.startswith("Hub") else "folder"
            return Resolved(model, model.source if kind == "Hub" else f"folder {spec}")
        except WeightsError as e:
            if not fallback:
                raise
            notice = f"could not load {spec!r} ({e}); showing the bundled weights instead"
    else:
        notice = ""
    folder = bundled()
    model = load_folder(folder, device)
    return Resolved(model, f"bundled {folder.relative_to(BUNDLED_DIR.parent).as_posix()}", notice)


def model_card(cfg: ModelConfig, repo_id: str) -> str:
    """A minimal Hub model card for weights that have no README.md of their own."""
    return (
        "---\nlibrary_name: cvaegan\ntags:\n- cvae-gan\n- image-generation\n- pytorch\n---\n"
        f"# {repo_id}\n\nCVAE-GAN weights (Bao et al., ICCV 2017) for the `cvaegan` package: "
        f"{cfg.num_classes} classes at {cfg.resolution}x{cfg.resolution}, z_dim {cfg.z_dim}.\n\n"
        "```python\nfrom cvaegan import CVAEGAN\n"
        f"model = CVAEGAN.from_pretrained({repo_id!r})\n```\n"
    )


def push(
    weights: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a weights folder (verified first) to a Hub model repo; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(weights)
    model = load_folder(folder)  # refuse to publish something that does not load
    api = HfApi(token=token, endpoint=endpoint)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if not (folder / "README.md").is_file():
        api.upload_file(
            path_or_fileobj=model_card(model.config, repo_id).encode(),
            path_in_repo="README.md",
            repo_id=repo_id,
            revision=revision,
            commit_message="Add model card",
        )
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        revision=revision,
        allow_patterns=["*.json", "*.safetensors", "*.md", "*.png", "*.jpg"],
        commit_message="Upload CVAE-GAN weights",
    )
    return str(getattr(info, "commit_url", info))
