"""One image-size type and one rule (a positive multiple of 32)."""

from __future__ import annotations

import pytest

from dfine_cli.errors import UsageError
from dfine_cli.image_size import (
    DEFAULT_IMG_SIZE,
    ImageSize,
    check_img_size,
    is_valid_side,
    parse_img_size,
)


def test_default_is_square_640() -> None:
    assert DEFAULT_IMG_SIZE == 640
    assert ImageSize.square() == (640, 640)


@pytest.mark.parametrize("side", [32, 64, 320, 640, 1280])
def test_multiples_of_32_are_accepted(side: int) -> None:
    assert is_valid_side(side)
    size = check_img_size(side)
    assert size == (side, side) and size.height == side and size.width == side


def test_rectangular_sizes_keep_height_then_width() -> None:
    size = check_img_size((480, 640))
    assert (size.height, size.width) == (480, 640)


@pytest.mark.parametrize("bad", [0, -32, 31, 100, 641])
def test_other_sides_are_usage_errors(bad: int) -> None:
    assert not is_valid_side(bad)
    with pytest.raises(UsageError, match=rf"^--img-size must be a positive multiple of 32 "
                                         rf"\(32, 64, 96, \.\.\., 640, \.\.\.\), got {bad}$"):
        parse_img_size(bad)


def test_wrong_number_of_sides_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"image size must be .*got \(32, 32, 32\)"):
        check_img_size((32, 32, 32))


def test_none_means_the_models_own_size() -> None:
    assert parse_img_size(None) is None
