"""Labelled image data: an ImageFolder directory or an uncompressed .tar of one -> uint8 tensors + class names."""

from __future__ import annotations

import csv
import os
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError
from .images import ImageError, fit, open_image, pil_to_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
# Seed of the one train / held-out split (split_indices): training, the judge, evaluation and release
# all hold out the same images.
SPLIT_SEED = 1234


class DataError(InputError):
    """The data set cannot be used as given; the message says how to fix it."""


@dataclass
class LabelledImages:
    """Decoded images and labels. images: (N, 3, R, R) uint8; labels: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_folders: list[str]
    class_names: list[str]
    paths: list[str]  # member path per image, "<class_folder>/<file>"
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)  # attr name -> (N,) float, NaN = unknown
    skipped: int = 0  # unreadable files left out

    @property
    def num_classes(self) -> int:
        return len(self.class_folders)

    def subset(self, idx: torch.Tensor) -> LabelledImages:
        idx_list = idx.tolist()
        return LabelledImages(
            self.images[idx],
            self.labels[idx],
            self.class_folders,
            self.class_names,
            [self.paths[i] for i in idx_list],
            {k: v[idx] for k, v in self.attributes.items()},
            self.skipped,
        )


def _list_directory(root: Path) -> list[tuple[str, str]]:
    """(member path relative to root, class folder) for every image file under root/<class>/..."""
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    items.append((str(Path(dirpath, f).relative_to(root).as_posix()), class_dir.name))
    return items


def _tar_members(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        tf = tarfile.open(path, mode="r:")  # uncompressed only: members are read in place
    except tarfile.ReadError as e:
        raise DataError(
            f"{path}: not an uncompressed tar archive ({e}); extract it or re-create it with `tar -cf`"
        ) from e
    members = [m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_EXTENSIONS)]
    return tf, members


def _class_of(member: str) -> str | None:
    parts = Path(member).parts
    parts = parts[1:] if parts and parts[0] == "." else parts
    return parts[0] if len(parts) >= 2 else None


def find_metadata(path: Path) -> Path | None:
    """metadata.csv inside a data directory, or beside a data directory or tar."""
    for candidate in ([path / "metadata.csv"] if path.is_dir() else []) + [path.parent / "metadata.csv"]:
        if candidate.is_file():
            return candidate
    return None


def read_metadata(csv_path: Path) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """-> ({class_folder: class_name}, {image path: {attr_name: value}}) from a metadata.csv."""
    names: dict[str, str] = {}
    attrs: dict[str, dict[str, float]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "class_folder" not in cols:
            raise DataError(
                f"{csv_path}: needs a 'class_folder' column (and optionally 'class_name', 'path', 'attr_*')"
            )
        attr_cols = [c for c in cols if c.startswith("attr_")]
        for row in reader:
            folder = row["class_folder"]
            if row.get("class_name"):
                names.setdefault(folder, row["class_name"])
            if attr_cols and row.get("path"):
                vals = {}
                for c in attr_cols:
                    try:
                        vals[c] = float(row[c]) if row[c] not in ("", None) else float("nan")
                    except ValueError:
                        vals[c] = float("nan")
                attrs[row["path"]] = vals
    return names, attrs


def load_images(
    path: str | os.PathLike,
    resolution: int,
    metadata: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> LabelledImages:
    """Decode a labelled image set into memory.

    path: a directory <class_folder>/<image> (ImageFolder layout) or an uncompressed .tar of the same.
    Images of any size/mode become RGB, centre-cropped and resized to `resolution`. Class display
    names come from metadata.csv (class_folder, class_name) inside/beside the data when present.
    Unreadable images are skipped with a warning.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; pass a folder of class folders or a .tar of one")
    tf = None
    if root.is_dir():
        items = _list_directory(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    elif tarfile.is_tarfile(root):
        tf, members = _tar_members(root)
        by_name = {m.name: m for m in members}
        items = sorted((m.name[2:] if m.name.startswith("./") else m.name, _class_of(m.name)) for m in members)
        items = [(p, c) for p, c in items if c is not None]
        classes = sorted({c for _, c in items})
    else:
        raise DataError(f"{root} is neither a directory nor a tar archive")
    if not classes:
        raise DataError(f"{root}: no class folders found; expected <class_folder>/<image>.jpg (ImageFolder layout)")
    counts = {c: 0 for c in classes}
    for _, c in items:
        counts[c] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{root}: class folder(s) with no images: {empty[:10]}; add images or remove the folder(s)")
    if len(classes) < 2:
        raise DataError(
            f"{root}: only one class ({classes[0]!r}); a conditional model needs at least two class folders"
        )

    meta_path = Path(metadata) if metadata else find_metadata(root)
    names, attrs = read_metadata(meta_path) if meta_path else ({}, {})

    if tf is not None:  # tarfile is not thread-safe: read the bytes in one pass, decode in threads
        raw = {}
        for member, _ in items:
            raw[member] = tf.extractfile(by_name.get(member) or by_name["./" + member]).read()
        tf.close()

    def decode(item: tuple[str, str]) -> torch.Tensor | None:
        member, _ = item
        try:
            data = raw[member] if tf is not None else (root / member).read_bytes()
            return pil_to_uint8(fit(open_image(data, name=member), resolution))
        except (ImageError, OSError) as e:
            warnings.warn(f"skipping unreadable image {member}: {e}", stacklevel=2)
            return None

    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        decoded = list(
            tqdm(
                pool.map(decode, items),
                total=len(items),
                desc=f"decoding {root.name}",
                disable=not progress,
                unit="img",
            )
        )
    keep = [i for i, t in enumerate(decoded) if t is not None]
    skipped = len(items) - len(keep)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} unreadable image(s) of {len(items)}", stacklevel=2)
    if not keep:
        raise DataError(f"{root}: none of the {len(items)} image files could be read")
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[items[i][1]] for i in keep], dtype=torch.int64)
    present = set(labels.tolist())
    missing = [c for c in classes if index[c] not in present]
    if missing:
        raise DataError(f"{root}: every image of class(es) {missing[:10]} is unreadable; fix or remove them")
    paths = [items[i][0] for i in keep]
    attributes = {}
    if attrs:
        cols = sorted({k for v in attrs.values() for k in v})
        for c in cols:
            attributes[c] = torch.tensor([attrs.get(p, {}).get(c, float("nan")) for p in paths], dtype=torch.float32)
    return LabelledImages(
        images=torch.stack([decoded[i] for i in keep]),
        labels=labels,
        class_folders=classes,
        class_names=[names.get(c, c) for c in classes],
        paths=paths,
        attributes=attributes,
        skipped=skipped,
    )


def split_indices(labels: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split -> (train_idx, val_idx). Each class gives round(fraction * n)
    images (at least 1 when fraction > 0, never all) to validation, chosen by a seeded shuffle."""
    train, val = [], []
    gen = np.random.default_rng(seed)
    labels_np = labels.numpy()
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        idx = idx[gen.permutation(len(idx))]
        k = 0 if fraction <= 0 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return torch.tensor(sorted(train), dtype=torch.int64), torch.tensor(sorted(val), dtype=torch.int64)


def remap_classes(extra: LabelledImages, data: LabelledImages) -> LabelledImages:
    """Relabel `extra` (e.g. generated images in class folders) with `data`'s class indices, by folder name."""
    index = {f: i for i, f in enumerate(data.class_folders)}
    unknown = sorted(set(extra.class_folders) - set(index))
    if unknown:
        raise DataError(f"extra images have class folders the data lacks: {unknown[:5]}")
    lut = torch.tensor([index[f] for f in extra.class_folders], dtype=torch.int64)
    return LabelledImages(
        extra.images,
        lut[extra.labels],
        list(data.class_folders),
        list(data.class_names),
        extra.paths,
        {},
        extra.skipped,
    )
