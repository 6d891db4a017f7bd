"""Streaming JSON: the reader and writer the Objects365 tools use on multi-GB files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfine_cli.data.cocofile import (
    ArrayElements,
    StreamedArray,
    iter_array,
    iter_members,
    write_streamed_json,
)
from dfine_cli.errors import DataError


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk_chars", [1, 5, 1 << 20])
def test_streaming_reader_matches_json_load(
    tmp_path: Path, indent: int | None, chunk_chars: int
) -> None:
    data = {
        "info": {"x": [1, 2.5, None, True]},
        "annotations": [
            {"id": i, "bbox": [i / 3, -1e-7, 12345678901234567890, 0]} for i in range(50)
        ],
        "images": [{"id": i, "file_name": f"é/{i}.jpg"} for i in range(20)],
        "empty": [],
        "n": 1234567,
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data, indent=indent))
    read = {
        k: list(v) if isinstance(v, ArrayElements) else v
        for k, v in iter_members(path, chunk_chars=chunk_chars)
    }
    assert read == data
    assert list(iter_array(path, "images", chunk_chars=chunk_chars)) == data["images"]


def test_streaming_writer_is_byte_identical_to_json_dump(tmp_path: Path) -> None:
    data = {
        "images": [{"id": i, "s": "ü"} for i in range(5000)],
        "categories": [{"id": 1}],
        "empty": [],
    }
    path = tmp_path / "a.json"
    with open(path, "w") as fh:
        write_streamed_json(
            fh, [(k, StreamedArray(iter(v)) if k != "categories" else v) for k, v in data.items()]
        )
    assert path.read_text() == json.dumps(data)


@pytest.mark.parametrize(
    "text", ['{"images": [1, 2', '{"images": [1,, 2]}', "[1]", '{"a": 1} x', ""]
)
def test_streaming_reader_rejects_malformed_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match="invalid JSON"):
        for _, value in iter_members(path, chunk_chars=4):
            if isinstance(value, ArrayElements):
                list(value)
