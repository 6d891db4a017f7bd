"""Do all nodes of a multi-node job train on the same data? A fingerprint per split, compared.

Each node may keep its copy of the dataset at its own path (``--data`` per node); what must
agree is the content. The fingerprint of a split is the number of image files under its image
folder and the SHA-256 of its annotation file's bytes: cheap (one directory walk, one read)
and enough to catch a partial copy, a different version of the annotations or a wrong folder.
Every rank computes it at start and all ranks compare (an all-gather of a few dozen bytes of
JSON); a mismatch stops every rank with a :class:`DataError` naming the nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dfine_cli.data.cocofile import DatasetSplit
from dfine_cli.engine.distributed import collective_device
from dfine_cli.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SplitFingerprint:
    """``images``: image files under the split's folder (recursive); ``annotations_sha256``: hex."""

    images: int
    annotations_sha256: str

    def describe(self) -> str:
        return f"{self.images} images, annotations {self.annotations_sha256[:12]}"


def count_images(folder: Path) -> int:
    """Image files (by suffix, case-insensitive) under ``folder``, subfolders included."""
    total = 0
    for _, _, files in os.walk(folder):
        total += sum(1 for name in files if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)
    return total


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def split_fingerprint(split: DatasetSplit) -> SplitFingerprint:
    return SplitFingerprint(count_images(split.images_dir), file_sha256(split.annotations))


def find_mismatch(fingerprints: list[tuple[int, dict[str, SplitFingerprint]]]) -> str | None:
    """Compare every node's fingerprints with node 0's; a one-line description of the first
    difference, or None when all agree. ``fingerprints``: ``(node rank, {split: fingerprint})``
    per rank, in rank order."""
    by_node: dict[int, dict[str, SplitFingerprint]] = {}
    for node, prints in fingerprints:
        by_node.setdefault(node, prints)
    reference_node = min(by_node)
    reference = by_node[reference_node]
    for node, prints in sorted(by_node.items()):
        for split in sorted(reference):
            mine, theirs = reference[split], prints.get(split)
            if theirs != mine:
                shown = theirs.describe() if theirs else "missing"
                return (f"the {split} split differs between nodes: node {reference_node} has "
                        f"{mine.describe()}, node {node} has {shown}; every node's --data must "
                        f"hold the same images and annotation files (paths may differ)")
    return None


def check_same_dataset(splits: dict[str, DatasetSplit], local_world_size: int | None = None) -> None:
    """Collective: raise :class:`DataError` on every rank unless all nodes see the same data.

    Needs an initialised process group; a no-op with one process. Ranks are grouped into nodes
    as torchrun numbers them (``rank // LOCAL_WORLD_SIZE``).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    per_node = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    node = dist.get_rank() // max(1, per_node)
    mine = {name: split_fingerprint(split) for name, split in splits.items()}
    payload = {"node": node, "splits": {k: [v.images, v.annotations_sha256] for k, v in mine.items()}}
    gathered = [(int(g["node"]), {k: SplitFingerprint(int(n), str(h)) for k, (n, h) in g["splits"].items()})
                for g in _all_gather_json(payload)]
    problem = find_mismatch(gathered)
    if problem:
        raise DataError(problem)


def _all_gather_json(value: object) -> list[Any]:
    """Every rank's JSON-encodable ``value``, in rank order (plain bytes, nothing unpickled)."""
    device = collective_device()
    data = json.dumps(value).encode()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buffer = torch.zeros(longest, dtype=torch.uint8, device=device)
    buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    buffers = [torch.empty_like(buffer) for _ in sizes]
    dist.all_gather(buffers, buffer)
    return [json.loads(b[: int(s.item())].cpu().numpy().tobytes()) for b, s in zip(buffers, sizes)]
