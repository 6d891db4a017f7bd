"""Our checkpoint format, atomic writes, and refusal of unsafe or broken files."""

from __future__ import annotations

import os

import pytest
import torch

from dfine_cli.checkpoints import read_checkpoint, save_checkpoint
from dfine_cli.detector import Detector
from dfine_cli.errors import CheckpointError
from tests.helpers import tiny_checkpoint


def test_own_format_round_trip_keeps_metadata(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny.pth", names=["a", "b", "c"], category_ids=[3, 7, 42])
    ckpt = read_checkpoint(path)
    assert ckpt.info.source_format == "dfine"
    assert ckpt.info.class_names == ["a", "b", "c"]
    assert ckpt.info.category_ids == [3, 7, 42]
    assert ckpt.info.img_size == (320, 320)
    assert ckpt.info.config.num_layers == 2
    det = Detector.from_checkpoint(path)
    assert det.class_names == ["a", "b", "c"]


def test_variant_is_recorded(tmp_path):
    det = Detector.from_preset("n", num_classes=2, variant="deim", img_size=320)
    path = det.save(tmp_path / "deim.pth")
    assert read_checkpoint(path).info.variant == "deim"
    assert read_checkpoint(path, variant="dfine").info.variant == "dfine"


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b"not a checkpoint at all", "not a PyTorch file"),
        (b"hello\n", "not a readable PyTorch file"),  # a text file: KeyError inside torch
        (b"PK\x03\x04broken", "not a readable PyTorch file"),
        (bytes(range(256)) * 4, "not a"),
    ],
    ids=["empty", "text", "text-newline", "broken-zip", "random"],
)
def test_garbage_files_are_not_checkpoints(tmp_path, content, why):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"^not a dfine/D-FINE checkpoint: .*x.pth.*{why}"):
        read_checkpoint(path)


def test_truncated_checkpoint_is_an_error(tmp_path):
    good = tiny_checkpoint(tmp_path / "good.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(bad)


def test_a_checkpoint_cut_anywhere_is_a_checkpoint_error(tmp_path):
    """Where the cut falls decides how torch fails (its zip reader raises OSError EINVAL for
    some); every one is the file's fault, none a file-system error."""
    data = tiny_checkpoint(tmp_path / "good.pth").read_bytes()
    bad = tmp_path / "bad.pth"
    for size in sorted({*range(0, len(data), max(1, len(data) // 50)), 100, 3000, 5000, 10000}):
        bad.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=r"^not a dfine/D-FINE checkpoint: "):
            read_checkpoint(bad)


def test_unrelated_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"optimizer": {"lr": 1.0}}, path)
    with pytest.raises(CheckpointError, match=r"^not a dfine/D-FINE checkpoint: .*no 'model'"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_save_is_atomic_when_serialisation_fails(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "ckpt.pth")
    before = path.read_bytes()
    det = Detector.from_checkpoint(path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, det.model, det.info)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
