"""The network input size: one type, one default and one rule (a positive multiple of 32).

D-FINE's deepest feature map has stride 32, so every side of the input must be a positive
multiple of 32 (anchors are derived from the input size). Sizes are in pixels and ordered
``(height, width)`` like torch tensors; a single integer means a square input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from dfine_cli.errors import UsageError

#: The side of the square input every official D-FINE model was trained and exported at.
DEFAULT_IMG_SIZE = 640
#: The stride of the deepest feature map: every side is a multiple of it.
IMG_SIZE_STRIDE = 32
#: The rule in words, for help texts and error messages.
IMG_SIZE_RULE = "a positive multiple of 32 (32, 64, 96, ..., 640, ...)"


class ImageSize(NamedTuple):
    """A network input size in pixels, ``(height, width)``; each a positive multiple of 32."""

    height: int
    width: int

    @classmethod
    def square(cls, side: int = DEFAULT_IMG_SIZE) -> ImageSize:
        return check_img_size(side)


def is_valid_side(side: int) -> bool:
    """Whether ``side`` (pixels) is a positive multiple of :data:`IMG_SIZE_STRIDE`."""
    return isinstance(side, int) and side >= IMG_SIZE_STRIDE and side % IMG_SIZE_STRIDE == 0


def check_img_size(size: int | Sequence[int], *, name: str = "image size") -> ImageSize:
    """``size`` (one side, or ``(h, w)``) as an :class:`ImageSize`, or a :class:`UsageError`.

    ``name`` is how the message refers to the value (``"--img-size"`` in the CLI).
    """
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if len(sides) != 2 or not all(is_valid_side(int(s)) and int(s) == s for s in sides):
        shown = size if isinstance(size, int) else tuple(size)
        raise UsageError(f"{name} must be {IMG_SIZE_RULE}, got {shown}")
    return ImageSize(int(sides[0]), int(sides[1]))


def parse_img_size(value: int | None, *, name: str = "--img-size") -> ImageSize | None:
    """A user's square ``--img-size``: ``None`` (use the model's own size) or a checked size."""
    return None if value is None else check_img_size(value, name=name)


__all__ = [
    "DEFAULT_IMG_SIZE",
    "IMG_SIZE_RULE",
    "IMG_SIZE_STRIDE",
    "ImageSize",
    "check_img_size",
    "is_valid_side",
    "parse_img_size",
]
