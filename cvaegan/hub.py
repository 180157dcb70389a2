"""Weights on disk and on the Hub: config.json + *.safetensors, loaded strictly; one resolver for CLI and app."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ConfigError, ModelConfig
from .models import CVAEGAN

CONFIG_NAME = "config.json"
DIRECTIONS_NAME = "directions.safetensors"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
BUNDLED_ORDER = ("faces", "flowers", "birds")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class WeightsError(RuntimeError):
    """Weights that cannot be loaded: missing, corrupt, or not matching their config."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _unwrap_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_pretrained(model: CVAEGAN, path: str | os.PathLike, fp16: bool = True,
                    include_discriminator: bool = False) -> Path:
    """Write config.json + encoder/generator/classifier[/discriminator].safetensors (+ directions).

    fp16 stores float tensors as float16 (loading casts back to float32). Each file is written to a
    temporary name and renamed, so an interrupted save never leaves a half-written file.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    names = ["encoder", "generator", "classifier"] + (["discriminator"] if include_discriminator else [])
    files: dict[str, str] = {}
    for name in names:
        net = getattr(model, name)
        if net is None:
            raise WeightsError(f"cannot save {name}: this model has none (load it with with_discriminator=True)")
        state = _unwrap_state(net)
        if fp16:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        fname = f"{name}.safetensors"
        tmp = out / (fname + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "network": name, "cvaegan": __version__})
        os.replace(tmp, out / fname)
        files[fname] = _sha256(out / fname)
    if model.directions is not None:
        files[DIRECTIONS_NAME] = _write_directions(model, out)
    _write_config(model, out, files)
    return out


def _write_directions(model: CVAEGAN, out: Path) -> str:
    tmp = out / (DIRECTIONS_NAME + ".tmp")
    save_file({"directions": model.directions.float().cpu().contiguous(),
               "scales": model.direction_scales.float().cpu().contiguous()}, str(tmp))
    os.replace(tmp, out / DIRECTIONS_NAME)
    return _sha256(out / DIRECTIONS_NAME)


def _write_config(model: CVAEGAN, out: Path, files: dict[str, str]) -> None:
    cfg = ModelConfig.from_dict({**model.config.to_dict(), "files": files, "package_version": __version__})
    model.config = cfg
    _atomic_write_bytes(out / CONFIG_NAME, cfg.to_json().encode("utf-8"))


def save_directions(model: CVAEGAN, path: str | os.PathLike) -> None:
    """Add (or replace) the latent directions of an existing weights folder; network files stay as they are."""
    out = Path(path)
    if model.directions is None:
        raise WeightsError("the model has no directions to save; compute them first")
    files = {k: v for k, v in read_config(out).files.items() if k != DIRECTIONS_NAME}
    files[DIRECTIONS_NAME] = _write_directions(model, out)
    _write_config(model, out, files)


def read_json(path: Path, missing: str, fix: str) -> dict:
    """A config file's JSON; WeightsError naming the file when it is missing (`missing`: what to do)
    or not valid JSON (`fix`: what to do)."""
    if not path.is_file():
        raise WeightsError(f"{path}: missing; {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e}); {fix}") from e


def read_config(folder: str | os.PathLike) -> ModelConfig:
    path = Path(folder) / CONFIG_NAME
    data = read_json(path, "a weights folder needs config.json + *.safetensors (see `cvaegan export`)",
                     "re-download or re-export the weights")
    try:
        return ModelConfig.from_dict(data, source=str(path))
    except ConfigError as e:
        raise WeightsError(str(e)) from e


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: missing; the weights folder is incomplete (re-download or re-export it)")
    try:
        return load_file(str(path))  # safetensors never executes code, unlike pickle
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e}); it may be truncated, "
                           "corrupted or a pickle renamed to .safetensors") from e


def verify_files(folder: Path, cfg: ModelConfig) -> None:
    """Check every file listed in config.json against its recorded sha256."""
    for fname, digest in cfg.files.items():
        p = folder / fname
        if not p.is_file():
            raise WeightsError(f"{p}: listed in config.json but missing; re-download or re-export the weights")
        if digest and _sha256(p) != digest:
            raise WeightsError(f"{p}: sha256 does not match config.json (file corrupted or replaced); "
                               "re-download or re-export the weights")


def load_state_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with a message that names the file and the offending keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:3]}")
        raise WeightsError(f"{source}: does not match config.json ({'; '.join(parts)})")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_folder(folder: str | os.PathLike, device: str | torch.device = "cpu",
                with_discriminator: bool = False, verify: bool = True) -> CVAEGAN:
    """Load a local weights folder strictly; networks in eval mode, float32, on `device`.
    verify=False skips the sha256 check (only for folders `download` has just verified)."""
    folder = Path(folder)
    cfg = read_config(folder)
    if verify:
        verify_files(folder, cfg)
    has_d = (folder / "discriminator.safetensors").is_file()
    if with_discriminator and not has_d:
        raise WeightsError(f"{folder}: no discriminator.safetensors; export with --export-discriminator to fine-tune")
    model = CVAEGAN(cfg, with_discriminator=with_discriminator)
    for name, net in model.networks().items():
        path = folder / f"{name}.safetensors"
        load_state_strict(net, _load_tensors(path), str(path))
    dpath = folder / DIRECTIONS_NAME
    if cfg.directions:
        t = _load_tensors(dpath)
        d, s = t.get("directions"), t.get("scales")
        if d is None or s is None or d.shape != (len(cfg.directions), cfg.z_dim) or s.shape != (len(cfg.directions),):
            raise WeightsError(f"{dpath}: expected 'directions' ({len(cfg.directions)}, {cfg.z_dim}) and "
                               f"'scales' ({len(cfg.directions)},) to match config.json")
        model.directions, model.direction_scales = d.float(), s.float()
    model.source = str(folder)
    return model.to(device).eval()


def is_repo_id(spec: str) -> bool:
    return bool(REPO_ID.match(spec)) and not Path(spec).exists()


def download(repo_id: str, revision: str | None = None, cache_dir: str | None = None,
             local_files_only: bool = False, endpoint: str | None = None) -> Path:
    """Fetch config.json and the files it lists from the Hub (or its cache) -> the snapshot folder.

    A file whose sha256 does not match config.json is removed from the cache and reported, so a
    later call downloads it again instead of reusing it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    kw = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if endpoint:
        kw["endpoint"] = endpoint
    try:
        cfg_path = Path(hf_hub_download(filename=CONFIG_NAME, **kw))
        cfg = read_config(cfg_path.parent)
        for fname in cfg.files:
            hf_hub_download(filename=fname, **kw)
    except RepositoryNotFoundError as e:
        raise WeightsError(f"Hub repo {repo_id!r} not found (or private: log in with `hf auth login`)") from e
    except RevisionNotFoundError as e:
        raise WeightsError(f"Hub repo {repo_id!r} has no revision {revision!r}") from e
    except LocalEntryNotFoundError as e:  # (a subclass of EntryNotFoundError: must come first)
        raise WeightsError(f"Hub repo {repo_id!r} is not in the local cache and the Hub cannot be reached "
                           f"(offline or HF_HUB_OFFLINE=1)") from e
    except EntryNotFoundError as e:
        raise WeightsError(f"Hub repo {repo_id!r} lacks a weights file: {e}") from e
    except OSError as e:  # network errors, refused connections, interrupted downloads
        raise WeightsError(f"could not download {repo_id!r} from the Hub: {e}") from e
    folder = cfg_path.parent
    try:
        verify_files(folder, cfg)
    except WeightsError:
        for fname in cfg.files:
            link = folder / fname
            if link.exists() and cfg.files[fname] and _sha256(link) != cfg.files[fname]:
                blob = link.resolve()
                link.unlink()
                if blob != link and blob.exists():
                    blob.unlink()
        raise
    return folder


def load_pretrained(name_or_path: str | os.PathLike, revision: str | None = None, device: str | torch.device = "cpu",
                    with_discriminator: bool = False, cache_dir: str | None = None,
                    endpoint: str | None = None) -> CVAEGAN:
    """A local weights folder, or a Hub repo id ("owner/name", optional revision) -> CVAEGAN."""
    spec = str(name_or_path)
    if Path(spec).is_dir():
        return load_folder(spec, device, with_discriminator)
    if is_repo_id(spec):
        try:  # cache first: no network traffic when the files are already here
            folder = download(spec, revision, cache_dir, local_files_only=True, endpoint=endpoint)
        except WeightsError:
            folder = download(spec, revision, cache_dir, endpoint=endpoint)
        model = load_folder(folder, device, with_discriminator, verify=False)  # download() verified the hashes
        model.source = f"Hub {spec}" + (f"@{revision}" if revision else "") + f" (commit {folder.name[:10]})"
        return model
    raise WeightsError(f"{spec!r} is neither a weights folder nor a Hub repo id like 'owner/name'")


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


def resolve_weights(spec: str | None = None, revision: str | None = None, device: str = "cpu",
                    fallback: bool = True, endpoint: str | None = None, cache_dir: str | None = None) -> Resolved:
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


def push(weights: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         revision: str | None = None, endpoint: str | None = None) -> str:
    """Upload a weights folder (verified first) to a Hub model repo; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(weights)
    model = load_folder(folder)  # refuse to publish something that does not load
    api = HfApi(token=token, endpoint=endpoint)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if not (folder / "README.md").is_file():
        api.upload_file(path_or_fileobj=model_card(model.config, repo_id).encode(), path_in_repo="README.md",
                        repo_id=repo_id, revision=revision, commit_message="Add model card")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                             allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"],
                             commit_message="Upload CVAE-GAN weights")
    return str(getattr(info, "commit_url", info))
