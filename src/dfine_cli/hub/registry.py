"""The table of official weights dfine knows by name, and where their files are cached.

One explicit table (:data:`WEIGHTS`) maps each name to its file at the release base, the model
size and variant it loads into, its training data, class list and official AP. Nothing is
registered by import side effects; ``dfine weights list`` prints this table.

- Release base: :data:`DEFAULT_BASE_URL`, replaced by ``$DFINE_WEIGHTS_URL`` when set (mirrors,
  air-gapped sites: ``file:///mnt/weights/`` works too, and the tests use a loopback server).
- Cache: ``$DFINE_HOME`` (default ``~/.cache/dfine``), one file per URL under
  ``weights/<host>/<path of the URL>``; a file placed there by hand is used as if downloaded
  (after the same verification).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from dfine_cli.coco_names import COCO_CATEGORY_IDS, COCO_NAMES
from dfine_cli.obj365_names import OBJ365_HEAD_IDS, OBJ365_HEAD_NAMES

DEFAULT_BASE_URL = "https://github.com/Peterande/storage/releases/download/dfinev1.0/"
BASE_URL_ENV = "DFINE_WEIGHTS_URL"
HOME_ENV = "DFINE_HOME"

Kind = Literal["detector", "backbone"]


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable weights file and what it loads into.

    ``ap`` is the figure the official README reports: COCO val2017 AP50:95 (%) for ``coco`` and
    ``obj2coco``, Objects365 full-validation AP50:95 (%) for ``obj365``; ``None`` for backbones.
    """

    name: str
    file: str
    kind: Kind
    backbone: str  # HGNetv2 B0/B2/B4/B5
    dataset: str
    size: str | None = None  # n/s/m/l/x for detectors
    variant: str = "dfine"
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()
    ap: float | None = None  # official mAP50:95, a fraction like every AP dfine reports
    ap_on: str = ""
    use_lab: bool = False  # backbones: the HGNetv2 learnable-affine blocks (B0, B2)
    sha256: str | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    @property
    def url(self) -> str:
        return base_url() + self.file

    def cache_path(self) -> Path:
        return cache_path_for_url(self.url)


# Official mAP50:95 as fractions (the official README gives percentages).
_COCO_AP = {"n": 42.8, "s": 48.5, "m": 52.3, "l": 54.0, "x": 55.8}
_OBJ2COCO_AP = {"s": 50.7, "m": 55.1, "l": 57.3, "x": 59.3}
_OBJ365_AP = {"s": 31.0, "m": 38.6, "l": 44.7, "x": 49.5}
_SIZE_BACKBONE = {"n": "B0", "s": "B0", "m": "B2", "l": "B4", "x": "B5"}
# D-FINE-L's Objects365 entries are the re-trained 25-epoch files the official README links.
_L_E25 = "_e25"


def _detector(size: str, dataset: str) -> WeightsEntry:
    coco = dataset in ("coco", "obj2coco")
    suffix = _L_E25 if size == "l" and dataset != "coco" else ""
    ap = {"coco": _COCO_AP, "obj2coco": _OBJ2COCO_AP, "obj365": _OBJ365_AP}[dataset][size]
    return WeightsEntry(
        name=f"dfine-{size}-{dataset}",
        file=f"dfine_{size}_{dataset}{suffix}.pth",
        kind="detector",
        backbone=_SIZE_BACKBONE[size],
        dataset={"coco": "COCO", "obj2coco": "Objects365+COCO", "obj365": "Objects365"}[dataset],
        size=size,
        class_names=COCO_NAMES if coco else OBJ365_HEAD_NAMES,
        category_ids=COCO_CATEGORY_IDS if coco else OBJ365_HEAD_IDS,
        ap=round(ap / 100, 4),
        ap_on="COCO val2017" if coco else "Objects365 val",
    )


def _backbone(name: str, use_lab: bool) -> WeightsEntry:
    return WeightsEntry(
        name=f"hgnetv2-{name.lower()}",
        file=f"PPHGNetV2_{name}_stage1.pth",
        kind="backbone",
        backbone=name,
        dataset="ImageNet",
        use_lab=use_lab,
    )


WEIGHTS: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        *(_detector(size, "coco") for size in ("n", "s", "m", "l", "x")),
        *(_detector(size, "obj365") for size in ("s", "m", "l", "x")),
        *(_detector(size, "obj2coco") for size in ("s", "m", "l", "x")),
        _backbone("B0", use_lab=True),
        _backbone("B2", use_lab=True),
        _backbone("B4", use_lab=False),
        _backbone("B5", use_lab=False),
    )
}
"""Every name dfine resolves, in the order ``dfine weights list`` shows them."""

BACKBONE_FOR_SIZE: dict[str, str] = {size: f"hgnetv2-{b.lower()}" for size, b in _SIZE_BACKBONE.items()}
"""The ImageNet backbone each model size starts from (as the official configurations)."""


def lookup(name: str) -> WeightsEntry | None:
    """The table entry for ``name`` (case-insensitive), or ``None``."""
    return WEIGHTS.get(name.strip().lower())


def base_url() -> str:
    """The release base URL, ``$DFINE_WEIGHTS_URL`` when set; always ends with ``/``."""
    url = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def dfine_home() -> Path:
    """``$DFINE_HOME``, default ``~/.cache/dfine``."""
    home = os.environ.get(HOME_ENV, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "dfine"


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def cache_path_for_url(url: str) -> Path:
    """Where the file of ``url`` is cached: ``$DFINE_HOME/weights/<host>/<url path>``.

    Every path component is reduced to safe characters, so no URL can point outside the cache.
    """
    parts = urlsplit(url)
    host = _UNSAFE.sub("_", parts.netloc) or parts.scheme or "local"
    pieces = [_UNSAFE.sub("_", unquote(p)) for p in parts.path.split("/") if p]
    pieces = [p for p in pieces if p not in (".", "..")]
    if not pieces:
        raise ValueError(f"URL without a file name: {url}")
    return dfine_home().joinpath("weights", host, *pieces)
