"""COCO-format annotation files: loading, streaming, writing, and locating a dataset's splits.

Two ways to read a COCO JSON:

- :func:`load_coco` parses the whole file (fine up to a few hundred MB) and checks its shape.
- :func:`iter_members` / :func:`iter_array` walk the top-level object one member at a time and
  the big arrays (``images``, ``annotations``) one element at a time, so memory stays bounded by
  the largest single element whatever the file size (Objects365's train file is ~10 GB).
  :func:`write_streamed_json` is the matching writer; its output is byte-identical to
  ``json.dump(obj, fh)`` of the equivalent dict.

A dataset argument (``DATA`` on the command line) is resolved by :func:`resolve_dataset`: either a
folder laid out as the D-FINE README describes::

    DATA/images/{train,val}/...
    DATA/annotations/instances_{train,val}.json

or a YAML file (paths relative to the YAML file's folder)::

    train: {images: images/train, annotations: annotations/instances_train.json}
    val:   {images: images/val,   annotations: annotations/instances_val.json}
    names: [square, circle]        # optional, class names in category-id order

or an Ultralytics ``data.yaml`` with YOLO txt labels (:mod:`dfine_cli.data.yolo`, which
converts each split once into a cached COCO file).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dfine_cli.errors import DataError, UsageError

SPLITS = ("train", "val", "test")
BIG_ARRAYS = frozenset({"images", "annotations"})

_WHITESPACE = " \t\n\r"
_NON_WHITESPACE = re.compile(r"[^ \t\n\r]")
_CHUNK_CHARS = 1 << 20


@dataclass(frozen=True)
class DatasetSplit:
    """Where one split of a COCO-format dataset lives.

    ``names`` are optional class names in category-id order, when the dataset description
    (YAML) gives them; the annotation file's ``categories`` stay authoritative.
    """

    images_dir: Path
    annotations: Path
    names: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- whole-file loading


def load_json(path: str | Path) -> Any:
    """Parse a JSON file, turning every failure into a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_coco(path: str | Path) -> dict[str, Any]:
    """Load a COCO annotation file and check its top-level shape.

    Requires an object with ``images`` and ``annotations`` lists and a ``categories`` list;
    everything finer (ids, boxes) is :mod:`dfine_cli.data.validate`'s job.
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing '{key}' (not a COCO annotation file?)")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


# --------------------------------------------------------------------------- streaming reader


class _Scanner:
    """Incremental JSON tokenizer over a text file; values are decoded by json's C scanner."""

    def __init__(self, fh: IO[str], path: Path, chunk_chars: int = _CHUNK_CHARS) -> None:
        self._fh = fh
        self._path = path
        self._chunk = chunk_chars
        self._buf = ""
        self._pos = 0
        self._dropped = 0  # characters discarded before the start of _buf
        self._eof = False
        self._scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

    def _error(self, message: str, pos: int | None = None) -> DataError:
        where = self._dropped + (self._pos if pos is None else pos)
        return DataError(f"{self._path}: invalid JSON near character {where}: {message}")

    def _fill(self, at_least: int) -> bool:
        """Append more text; False at end of file."""
        if self._eof:
            return False
        if self._pos >= len(self._buf) // 2:
            self._dropped += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        try:
            text = self._fh.read(max(self._chunk, at_least))
        except UnicodeDecodeError as exc:
            raise DataError(f"{self._path}: not UTF-8 text ({exc.reason})") from exc
        if not text:
            self._eof = True
            return False
        self._buf += text
        return True

    def peek(self) -> str:
        """The next non-whitespace character, without consuming it ('' at end of file)."""
        # Fast path for compact JSON (json.dump's ", " separators): at most one space to skip.
        buf, pos = self._buf, self._pos
        if pos + 1 < len(buf):
            char = buf[pos]
            if char not in _WHITESPACE:
                return char
            if char == " " and buf[pos + 1] not in _WHITESPACE:
                self._pos = pos + 1
                return buf[pos + 1]
        while True:
            match = _NON_WHITESPACE.search(self._buf, self._pos)
            if match is not None:
                self._pos = match.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
            if not self._fill(self._chunk):
                return ""

    def expect(self, allowed: str) -> str:
        char = self.peek()
        if char == "" or char not in allowed:
            found = "end of file" if char == "" else repr(char)
            wanted = " or ".join(repr(c) for c in allowed)
            raise self._error(f"expected {wanted}, found {found}")
        self._pos += 1
        return char

    def value(self) -> Any:
        """Decode the next complete JSON value."""
        if self.peek() == "":
            raise self._error("unexpected end of file")
        grow = self._chunk
        while True:
            try:
                # The scanner JSONDecoder.raw_decode calls, without raw_decode's extra frame.
                obj, end = self._scan(self._buf, self._pos)
            except (StopIteration, json.JSONDecodeError) as exc:
                # Possibly only cut off by the end of the buffer: read more and retry.
                if self._fill(grow):
                    grow *= 2
                    continue
                if isinstance(exc, StopIteration):
                    raise self._error("Expecting value", exc.value) from None
                raise self._error(exc.msg, exc.pos) from exc
            # A number or literal touching the end of the buffer may continue in the next chunk.
            if end == len(self._buf) and self._fill(grow):
                continue
            self._pos = end
            return obj


class ArrayElements(Iterator[Any]):
    """Lazy iterator over one JSON array's elements, read from the stream as they are asked for."""

    def __init__(self, scanner: _Scanner) -> None:
        self._scanner = scanner
        scanner.expect("[")
        self._first = True
        self._done = False
        if scanner.peek() == "]":
            scanner.expect("]")
            self._done = True

    def __iter__(self) -> ArrayElements:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if not self._first and self._scanner.expect(",]") == "]":
            self._done = True
            raise StopIteration
        self._first = False
        return self._scanner.value()

    def drain(self) -> None:
        for _ in self:
            pass


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        fh = open(path, encoding="utf-8-sig")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        yield fh


def iter_members(
    path: str | Path, stream: frozenset[str] = BIG_ARRAYS, chunk_chars: int = _CHUNK_CHARS
) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for each member of the top-level JSON object, in file order.

    For keys in ``stream`` whose value is an array, ``value`` is an :class:`ArrayElements`
    iterator; whatever the caller does not consume is skipped (element by element, so a huge
    array is never held) when the next member is requested. Other values are decoded whole.
    Malformed JSON raises :class:`DataError` naming the character offset.
    """
    path = Path(path)
    with _open_text(path) as fh:
        scanner = _Scanner(fh, path, chunk_chars)
        if scanner.peek() != "{":
            raise scanner._error("expected a JSON object at the top level")
        scanner.expect("{")
        if scanner.peek() == "}":
            scanner.expect("}")
        else:
            while True:
                key = scanner.value()
                if not isinstance(key, str):
                    raise scanner._error("expected a member name")
                scanner.expect(":")
                if key in stream and scanner.peek() == "[":
                    elements = ArrayElements(scanner)
                    yield key, elements
                    elements.drain()
                else:
                    yield key, scanner.value()
                if scanner.expect(",}") == "}":
                    break
        if scanner.peek() != "":
            raise scanner._error("extra data after the top-level object")


def iter_array(path: str | Path, key: str, chunk_chars: int = _CHUNK_CHARS) -> Iterator[Any]:
    """Stream the elements of the top-level array ``key``; stops reading once it is done."""
    for name, value in iter_members(path, BIG_ARRAYS | {key}, chunk_chars):
        if name == key:
            if not isinstance(value, ArrayElements):
                raise DataError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
            yield from value
            return
    raise DataError(f"{path}: missing '{key}' (not a COCO annotation file?)")


# --------------------------------------------------------------------------- streaming writer


@dataclass(frozen=True)
class StreamedArray:
    """A JSON array whose elements are produced lazily while the file is written."""

    elements: Iterable[Any]


def write_streamed_json(fh: IO[str], members: Iterable[tuple[str, Any]]) -> None:
    """Write one JSON object member by member; :class:`StreamedArray` values are streamed.

    The bytes equal ``json.dump(dict(members), fh)`` (default separators, ASCII escapes).
    """
    encode = json.JSONEncoder().encode
    fh.write("{")
    for index, (key, value) in enumerate(members):
        fh.write(f"{', ' if index else ''}{encode(key)}: ")
        if isinstance(value, StreamedArray):
            # Encoding a list of elements in one call is much faster than element by element;
            # "[a, b]"[1:-1] is exactly the text between the brackets.
            fh.write("[")
            separator = ""
            batch: list[Any] = []
            for element in value.elements:
                batch.append(element)
                if len(batch) == 4096:
                    fh.write(separator + encode(batch)[1:-1])
                    separator = ", "
                    batch.clear()
            if batch:
                fh.write(separator + encode(batch)[1:-1])
            fh.write("]")
        else:
            fh.write(encode(value))
    fh.write("}")


# --------------------------------------------------------------------------- dataset layout


def _names_from_yaml(value: Any, source: Path) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(n, str) for n in value):
        return tuple(value)
    if isinstance(value, dict) and all(isinstance(n, str) for n in value.values()):
        try:
            return tuple(value[k] for k in sorted(value, key=int))
        except (TypeError, ValueError):
            pass
    raise UsageError(f"{source}: 'names' must be a list of class names or a mapping id → name")


def _load_yaml_spec(path: Path) -> dict[str, Any]:
    from dfine_cli.fileio import read_yaml

    try:
        spec = read_yaml(path)  # "unsafe YAML" / "invalid YAML" as one-line data errors
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: expected a mapping with {'/'.join(SPLITS)} entries")
    unknown = sorted(set(map(str, spec)) - {*SPLITS, "names"})
    if unknown:
        allowed = ", ".join((*SPLITS, "names"))
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    return spec


def _is_yaml(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".yaml", ".yml")


def _resolve_yaml(path: Path, split: str) -> DatasetSplit:
    from dfine_cli.data import yolo

    if yolo.is_data_yaml(path):  # an Ultralytics data.yaml: its YOLO labels, converted once
        return yolo.cached_split(path, split)
    spec = _load_yaml_spec(path)
    if split not in spec:
        raise DataError(f"{path}: no '{split}' entry")
    entry = spec[split]
    if not isinstance(entry, dict) or set(entry) != {"images", "annotations"}:
        raise UsageError(f"{path}: '{split}' must have exactly the keys 'images' and 'annotations'")
    root = path.parent
    names = _names_from_yaml(spec["names"], path) if "names" in spec else None
    return DatasetSplit(
        images_dir=root / str(entry["images"]),
        annotations=root / str(entry["annotations"]),
        names=names,
    )


def resolve_dataset(data: str | Path, split: str) -> DatasetSplit:
    """Locate one split of a dataset given as a folder or a YAML description.

    Raises :class:`DataError` if the dataset, the split, its image folder or its annotation file
    is missing; :class:`UsageError` for a malformed YAML description (unknown keys are errors).
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    path = Path(data)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    if path.is_dir():
        resolved = DatasetSplit(
            images_dir=path / "images" / split,
            annotations=path / "annotations" / f"instances_{split}.json",
        )
    elif _is_yaml(path):
        resolved = _resolve_yaml(path, split)
    else:
        raise UsageError(
            f"{path}: expected a dataset folder (images/{split}, annotations/instances_{split}.json) "
            "or a .yaml description"
        )
    if not resolved.annotations.is_file():
        raise DataError(f"{split} annotations not found: {resolved.annotations}")
    if not resolved.images_dir.is_dir():
        raise DataError(f"{split} image folder not found: {resolved.images_dir}")
    return resolved


def available_splits(data: str | Path) -> list[str]:
    """The splits ``data`` declares: a folder's splits with an annotation file, a YAML's entries."""
    path = Path(data)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    if _is_yaml(path):
        from dfine_cli.data import yolo

        if yolo.is_data_yaml(path):
            return list(yolo.read_data_yaml(path).splits)
        spec = _load_yaml_spec(path)
        return [split for split in SPLITS if split in spec]
    if not path.is_dir():
        raise UsageError(f"{path}: expected a dataset folder or a .yaml description")
    return [s for s in SPLITS if (path / "annotations" / f"instances_{s}.json").is_file()]
