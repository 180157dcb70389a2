"""Saving and loading a module through its config: config.json + *.safetensors, written atomically,
checked by sha256 and loaded strictly, from a local folder or a Hub repo. Knows no concrete model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError
from .errors import CVAEGANError

CONFIG_NAME = "config.json"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class WeightsError(CVAEGANError, RuntimeError):
    """Weights that cannot be loaded: missing, corrupt, or not matching their config."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: an interrupted write never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return sha256(path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: missing; the weights folder is incomplete (re-download or re-export it)")
    try:
        return load_file(str(path))  # safetensors never executes code, unlike pickle
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated, "
            "corrupted or a pickle renamed to .safetensors"
        ) from e


def read_json(path: Path, missing: str, fix: str) -> dict:
    """A config file's JSON; WeightsError naming the file when it is missing (`missing`: what to do)
    or not valid JSON (`fix`: what to do)."""
    if not path.is_file():
        raise WeightsError(f"{path}: missing; {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e}); {fix}") from e


def unwrap_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes, on the CPU."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def float16_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """unwrap_state with every floating-point tensor in float16, as weights folders store their networks."""
    return {k: v.half() if v.is_floating_point() else v for k, v in unwrap_state(module).items()}


def verify_files(folder: Path, files: dict[str, str], fix: str = "re-download or re-export the weights") -> None:
    """Check every file listed in config.json (name -> sha256; "" = not recorded) against its hash;
    `fix` says what to do when one is missing or differs."""
    for fname, digest in files.items():
        p = folder / fname
        if not p.is_file():
            raise WeightsError(f"{p}: listed in config.json but missing; {fix}")
        if digest and sha256(p) != digest:
            raise WeightsError(f"{p}: sha256 does not match config.json (file corrupted or replaced); {fix}")


def load_state_strict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with a message that names the file and the offending keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
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


def is_repo_id(spec: str) -> bool:
    return bool(REPO_ID.match(spec)) and not Path(spec).exists()


class PretrainedMixin:
    """save/load for an nn.Module built from `self.config`, a dataclass with `from_dict(data, source)`
    and a `files` field (file name -> sha256).

    A subclass names its config class and which network lives in which file (`weight_files`). Saving
    writes the tensor files, then config.json listing their hashes; loading builds the module from
    config.json alone and loads every file strictly. `source` says where the weights came from.
    """

    config_class: ClassVar[Any]
    config_missing: ClassVar[str] = "a weights folder needs config.json + *.safetensors"  # what to do
    config_broken: ClassVar[str] = "re-download or re-export the weights"  # what to do
    source: str = ""

    def weight_files(self) -> dict[str, nn.Module]:
        """File name -> the network saved in it (what `from_folder` loads)."""
        raise NotImplementedError

    def load_extras(self, folder: Path) -> None:
        """Read files that hold no network (nothing by default)."""

    @classmethod
    def read_config(cls, folder: str | os.PathLike) -> Any:
        path = Path(folder) / CONFIG_NAME
        data = read_json(path, cls.config_missing.format(folder=folder), cls.config_broken)
        try:
            return cls.config_class.from_dict(data, str(path))
        except ConfigError as e:
            raise WeightsError(str(e)) from e

    def write_config(self, folder: Path, files: dict[str, str], **changes: Any) -> None:
        """Set config.files (and any other `changes`) and write config.json atomically."""
        self.config = dataclasses.replace(self.config, files=files, **changes)
        text = json.dumps(dataclasses.asdict(self.config), indent=2, ensure_ascii=False) + "\n"
        atomic_write_bytes(folder / CONFIG_NAME, text.encode("utf-8"))

    def write_folder(
        self,
        path: str | os.PathLike,
        tensors: dict[str, dict[str, torch.Tensor]],
        metadata: dict[str, dict[str, str]] | None = None,
        **changes: Any,
    ) -> Path:
        """Write each file of `tensors` (file name -> tensors, with optional safetensors metadata per
        file), then config.json listing them. Returns the folder."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        files = {name: save_tensors(t, out / name, (metadata or {}).get(name)) for name, t in tensors.items()}
        self.write_config(out, files, **changes)
        return out

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True, **build: Any
    ):
        """Load a local folder strictly (cls(config, **build), then every weight file); eval mode, on `device`.
        verify=False skips the sha256 check (only for folders `download` has just verified)."""
        folder = Path(folder)
        cfg = cls.read_config(folder)
        if verify:
            verify_files(folder, cfg.files, cls.config_broken)
        model = cls(cfg, **build)
        for fname, net in model.weight_files().items():
            load_state_strict(net, load_tensors(folder / fname), str(folder / fname))
        model.load_extras(folder)
        model.source = str(folder)
        return model.to(device).eval()

    @classmethod
    def download(
        cls,
        repo_id: str,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        endpoint: str | None = None,
    ) -> Path:
        """Fetch config.json and the files it lists from the Hub (or its cache) -> the snapshot folder.

        A file whose sha256 does not match config.json is removed from the cache and reported, so a
        later call downloads it again instead of reusing it.
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        kw = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        if endpoint:
            kw["endpoint"] = endpoint
        try:
            cfg_path = Path(hf_hub_download(filename=CONFIG_NAME, **kw))
            cfg = cls.read_config(cfg_path.parent)
            for fname in cfg.files:
                hf_hub_download(filename=fname, **kw)
        except RepositoryNotFoundError as e:
            raise WeightsError(f"Hub repo {repo_id!r} not found (or private: log in with `hf auth login`)") from e
        except RevisionNotFoundError as e:
            raise WeightsError(f"Hub repo {repo_id!r} has no revision {revision!r}") from e
        except LocalEntryNotFoundError as e:  # (a subclass of EntryNotFoundError: must come first)
            raise WeightsError(
                f"Hub repo {repo_id!r} is not in the local cache and the Hub cannot be reached "
                f"(offline or HF_HUB_OFFLINE=1)"
            ) from e
        except EntryNotFoundError as e:
            raise WeightsError(f"Hub repo {repo_id!r} lacks a weights file: {e}") from e
        except OSError as e:  # network errors, refused connections, interrupted downloads
            raise WeightsError(f"could not download {repo_id!r} from the Hub: {e}") from e
        folder = cfg_path.parent
        try:
            verify_files(folder, cfg.files)
        except WeightsError:
            for fname, digest in cfg.files.items():
                link = folder / fname
                if link.exists() and digest and sha256(link) != digest:
                    blob = link.resolve()
                    link.unlink()
                    if blob != link and blob.exists():
                        blob.unlink()
            raise
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        endpoint: str | None = None,
        **build: Any,
    ):
        """A local folder, or a Hub repo id ("owner/name", optional revision; the cache first, so no
        network traffic when the files are already here) -> the loaded module."""
        spec = str(name_or_path)
        if Path(spec).is_dir():
            return cls.from_folder(spec, device, **build)
        if is_repo_id(spec):
            try:
                folder = cls.download(spec, revision, cache_dir, local_files_only=True, endpoint=endpoint)
            except WeightsError:
                folder = cls.download(spec, revision, cache_dir, endpoint=endpoint)
            model = cls.from_folder(folder, device, verify=False, **build)  # download() verified the hashes
            model.source = f"Hub {spec}" + (f"@{revision}" if revision else "") + f" (commit {folder.name[:10]})"
            return model
        raise WeightsError(f"{spec!r} is neither a weights folder nor a Hub repo id like 'owner/name'")
