"""Ultralytics (YOLO) dataset files: ``dfine train --data data.yaml`` with YOLO txt labels.

A ``data.yaml`` as Ultralytics writes it::

    path: ../datasets/shapes     # root of the relative entries (optional: the YAML's folder)
    train: images/train          # an image folder, a .txt list of images, or a list of both
    val: images/val
    test:                        # optional
    names: [square, circle]      # or {0: square, 1: circle}; or only nc: 2 (class_0, class_1)
    nc: 2                        # optional; must agree with names

Labels are found the Ultralytics way (``.../images/x.jpg`` → ``.../labels/x.txt``).

How training reads them: each split is converted **once** into a COCO JSON cache next to its
labels (``labels/train`` → ``labels/train.dfine-train.json``), and everything downstream
(validation before training, the dataset class, COCO evaluation, the multi-node dataset check)
reads that file. We chose a cache over a second dataset class because evaluation, validation
and the distributed checks all speak COCO: one conversion keeps a single code path for them.
The cache records a key over the class names and the path, size and modification time of
every image and label file; any change makes the next run convert again. Distributed training
converts on local rank 0 of each machine first while the others wait
(:func:`dfine_cli.engine.distributed.local_main_first`). It is written atomically (temporary
file, then rename), so concurrent processes never read a partial file;
a read-only dataset gets its cache under ``$DFINE_HOME/yolo-cache`` instead.

:func:`convert_yolo_dataset` is the explicit form (``dfine data convert --from yolo DATA.yaml
OUT/``): one COCO file per split and a dataset YAML that ``dfine train --data`` takes as is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfine_cli.data.cocofile import SPLITS, DatasetSplit, iter_members
from dfine_cli.data.convert import (
    IMAGE_SUFFIXES,
    ConvertSummary,
    convert_yolo_images,
    yolo_label_path,
)
from dfine_cli.errors import DataError, FileSystemError
from dfine_cli.fileio import atomic_open, read_yaml

log = logging.getLogger("dfine.data.yolo")

CACHE_VERSION = 1
_CACHE_KEY = "dfine_yolo_cache_key"
#: Keys of an Ultralytics data.yaml that dfine reads; others (download, roboflow...) are ignored.
DATA_YAML_KEYS = ("path", *SPLITS, "names", "nc")


@dataclass(frozen=True)
class YoloDataset:
    """A parsed ``data.yaml``: where its splits are and what its classes are called.

    ``splits`` maps each split the file declares (non-empty entry) to its entries, each
    resolved to an existing image folder or ``.txt`` list of images.
    """

    yaml_path: Path
    root: Path
    names: tuple[str, ...]
    splits: dict[str, tuple[Path, ...]]


@dataclass(frozen=True)
class YoloConversion:
    """What :func:`convert_yolo_dataset` wrote: the dataset YAML and one summary per split."""

    dataset_yaml: Path
    splits: dict[str, ConvertSummary]


def is_data_yaml(path: Path) -> bool:
    """Whether the YAML file ``path`` is an Ultralytics dataset file (not our own layout).

    Ours has ``train``/``val``/``test`` mappings of ``images`` and ``annotations``; an
    Ultralytics file has ``path`` or ``nc``, or splits given as a folder, a list file or a list.
    """
    spec = read_yaml(path)
    if not isinstance(spec, dict):
        return False
    return "path" in spec or "nc" in spec or any(isinstance(spec.get(s), str | list) for s in SPLITS)


def _names(spec: dict[str, Any], path: Path) -> tuple[str, ...]:
    names, nc = spec.get("names"), spec.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1):
        raise DataError(f"{path}: 'nc' must be a positive integer, got {nc!r}")
    if names is None:
        if nc is None:
            raise DataError(f"{path}: no class names: add 'names' (a list, or a mapping 0..n-1 → name)")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            by_index = {}
        if sorted(by_index) != list(range(len(names))):
            raise DataError(f"{path}: 'names' as a mapping must have the keys 0..{len(names) - 1}")
        names = [by_index[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str | int) for n in names):
        raise DataError(f"{path}: 'names' must be a non-empty list of class names or a mapping 0..n-1 → name")
    result = tuple(str(n) for n in names)
    if nc is not None and nc != len(result):
        raise DataError(f"{path}: nc is {nc} but 'names' lists {len(result)} classes")
    if len(set(result)) != len(result):
        raise DataError(f"{path}: 'names' has duplicates")
    return result


def _root(spec: dict[str, Any], path: Path) -> Path:
    """``path:`` relative to the YAML's folder (else to the working folder); the folder itself."""
    value = spec.get("path")
    if value in (None, ""):
        return path.parent
    root = Path(str(value)).expanduser()
    candidates = [root] if root.is_absolute() else [path.parent / root, Path.cwd() / root]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    hint = " (dfine does not download datasets: fetch it first)" if spec.get("download") else ""
    raise DataError(f"{path}: dataset root 'path: {value}' not found{hint}")


def _entry(root: Path, value: str, path: Path, split: str) -> Path:
    candidate = root / value
    if not candidate.exists() and value.startswith("../"):
        candidate = root / value[3:]  # Roboflow exports: '../train/images' beside data.yaml
    if candidate.is_dir() or (candidate.is_file() and candidate.suffix.lower() == ".txt"):
        return candidate
    if candidate.is_file():
        raise DataError(f"{path}: '{split}' entry {value} is neither an image folder nor a .txt list of images")
    raise DataError(f"{path}: '{split}' images not found: {candidate}")


def read_data_yaml(path: str | os.PathLike[str]) -> YoloDataset:
    """Parse and check an Ultralytics ``data.yaml`` (see the module docstring).

    Raises:
        DataError: not a mapping, no usable class names, ``nc`` disagreeing with them, a
            dataset root or split entry that does not exist.
    """
    path = Path(path)
    spec = read_yaml(path)
    if not isinstance(spec, dict):
        raise DataError(f"{path}: expected a mapping (an Ultralytics data.yaml)")
    names = _names(spec, path)
    root = _root(spec, path)
    splits: dict[str, tuple[Path, ...]] = {}
    for split in SPLITS:
        value = spec.get(split)
        if value in (None, "", []):
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise DataError(f"{path}: '{split}' must be a folder, a .txt list of images, or a list of them")
        splits[split] = tuple(_entry(root, v, path, split) for v in values)
    if not splits:
        raise DataError(f"{path}: no train/val/test entries")
    return YoloDataset(path, root, names, splits)


def _listed_images(listing: Path) -> list[Path]:
    """Image paths of a ``.txt`` list: absolute, or relative to the list's folder."""
    images = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            image = Path(line).expanduser()
            images.append(image if image.is_absolute() else listing.parent / image)
    return images


def split_images(dataset: YoloDataset, split: str) -> list[Path]:
    """Every image of ``split`` as an absolute path, sorted and without duplicates.

    Raises:
        DataError: the split is not declared, or holds no image.
    """
    if split not in dataset.splits:
        raise DataError(f"{dataset.yaml_path}: no '{split}' entry")
    found: set[Path] = set()
    for entry in dataset.splits[split]:
        if entry.is_dir():
            found.update(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.update(_listed_images(entry))
    if not found:
        where = ", ".join(str(e) for e in dataset.splits[split])
        raise DataError(f"{dataset.yaml_path}: no images in the '{split}' split ({where})")
    return sorted(Path(os.path.normpath(p.absolute())) for p in found)


def images_root(images: Iterable[Path]) -> Path:
    """The deepest folder holding every image (COCO ``file_name``s are relative to it)."""
    return Path(os.path.commonpath([str(p.parent.absolute()) for p in images]))


def _stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(names: Iterable[str], images: Iterable[Path]) -> str:
    """SHA-256 over the class names and path, size and mtime of every image and label file."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, list(names)]).encode())
    for image in images:
        label = yolo_label_path(image)
        digest.update(f"\n{image}\t{_stat(image)}\t{label}\t{_stat(label)}".encode())
    return digest.hexdigest()


def _cached_key(path: Path) -> str | None:
    """The key stored in a cache file's ``info`` (its first member), or None."""
    try:
        for key, value in iter_members(path):
            return str(value.get(_CACHE_KEY)) if key == "info" and isinstance(value, dict) else None
    except (DataError, OSError):
        return None
    return None


def cache_path(images_dir: Path, split: str) -> Path:
    """Beside the labels: ``.../labels/train`` → ``.../labels/train.dfine-train.json``."""
    parts = images_dir.parts
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        labels = Path(*parts[:at], "labels", *parts[at + 1:])
        if labels.is_dir():
            images_dir = labels
    return images_dir.parent / f"{images_dir.name}.dfine-{split}.json"


def _fallback_cache_path(preferred: Path) -> Path:
    from dfine_cli.hub.registry import dfine_home

    tag = hashlib.sha256(str(preferred.absolute()).encode()).hexdigest()[:16]
    return dfine_home() / "yolo-cache" / f"{tag}-{preferred.name}"


def cached_split(path: str | os.PathLike[str], split: str) -> DatasetSplit:
    """One split of an Ultralytics ``data.yaml`` as a COCO-format split, converting on demand.

    Reuses the cache when its key matches (see the module docstring), else converts and logs
    one line saying so.

    Raises:
        DataError: the data.yaml is malformed, the split is missing or has no usable image.
    """
    dataset = read_data_yaml(path)
    images = split_images(dataset, split)
    root = images_root(images)
    key = cache_key(dataset.names, images)
    preferred = cache_path(root, split)
    for candidate in (preferred, _fallback_cache_path(preferred)):
        if candidate.is_file() and _cached_key(candidate) == key:
            log.debug("%s: '%s' labels from the cache %s", dataset.yaml_path, split, candidate)
            return DatasetSplit(root, candidate, dataset.names)
    try:
        summary = convert_yolo_images(images, root, dataset.names, preferred, info={_CACHE_KEY: key})
    except FileSystemError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        preferred = _fallback_cache_path(preferred)
        summary = convert_yolo_images(images, root, dataset.names, preferred, info={_CACHE_KEY: key})
    log.info("%s: converted the YOLO labels of '%s' (%d images, %d boxes) once to %s; reused until "
             "an image or label changes", dataset.yaml_path, split, summary.images, summary.annotations,
             summary.output)
    return DatasetSplit(root, summary.output, dataset.names)


def convert_yolo_dataset(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> YoloConversion:
    """Convert every split of an Ultralytics ``data.yaml`` in one call.

    Writes ``out_dir/annotations/instances_<split>.json`` per split and ``out_dir/data.yaml``
    (our dataset YAML: each split's image folder and annotation file, and the class names),
    which ``dfine train --data`` takes as is. Images are not copied: the image folders are
    written relative to ``out_dir`` when inside it, else as absolute paths. Every file is
    written atomically.

    Raises:
        DataError: as :func:`read_data_yaml` and :func:`split_images`, or a split with nothing
            to convert.
    """
    import yaml

    dataset = read_data_yaml(path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file; give a folder")
    summaries: dict[str, ConvertSummary] = {}
    entries: dict[str, Any] = {}
    for split in dataset.splits:
        images = split_images(dataset, split)
        root = images_root(images)
        target = out / "annotations" / f"instances_{split}.json"
        summaries[split] = convert_yolo_images(images, root, dataset.names, target)
        try:
            folder = root.absolute().relative_to(out.absolute()).as_posix()
        except ValueError:
            folder = str(root.absolute())
        entries[split] = {"images": folder, "annotations": f"annotations/instances_{split}.json"}
    with atomic_open(out / "data.yaml") as fh:
        fh.write(f"# converted by dfine from {Path(path).absolute()}\n")
        yaml.safe_dump({**entries, "names": list(dataset.names)}, fh, sort_keys=False, allow_unicode=True)
    return YoloConversion(out / "data.yaml", summaries)
