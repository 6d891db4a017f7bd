"""Sources of a prediction: literal paths win over glob patterns."""

from __future__ import annotations

import pytest

from dfine_cli.errors import DataError
from dfine_cli.media import resolve_sources
from tests.conftest import write_jpeg


@pytest.mark.parametrize("name", ["photo [1].jpg", "what?.jpg", "star*.png", "[abc].jpg"])
def test_an_existing_file_with_glob_characters_is_taken_literally(tmp_path, name):
    path = write_jpeg(tmp_path / name)
    write_jpeg(tmp_path / "photo 1.jpg")  # what "[1]" would match as a pattern
    assert resolve_sources(str(path)).images == [path]


def test_an_existing_folder_with_brackets(tmp_path):
    image = write_jpeg(tmp_path / "set [a]" / "x.jpg")
    assert resolve_sources(str(tmp_path / "set [a]")).images == [image]


def test_patterns_still_work(tmp_path):
    a = write_jpeg(tmp_path / "a1.jpg")
    b = write_jpeg(tmp_path / "a2.jpg")
    write_jpeg(tmp_path / "b1.jpg")
    assert resolve_sources(str(tmp_path / "a[0-9].jpg")).images == [a, b]
    assert resolve_sources(str(tmp_path / "**" / "a?.jpg")).images == [a, b]
    with pytest.raises(DataError, match="no files match"):
        resolve_sources(str(tmp_path / "z[0-9].jpg"))
