"""Which detections to keep: a score threshold per class, and optionally only some classes.

Users write the choice as text (``--conf 0.3,person=0.5 --classes person,car``) or as Python
values (``conf={"person": 0.5}``, ``classes=["person", 2]``). It is read in two steps:

1. :meth:`FilterSpec.parse` checks the syntax (numbers in 0..1, ``key=value`` pairs) before
   any model is loaded, so a typo fails at once;
2. :meth:`FilterSpec.resolve` turns class names and ids into class indices of one model
   (an unknown name is a :class:`~dfine_cli.errors.UsageError` that names it and lists
   valid ones), giving the :class:`DetectionFilter` that prediction applies.

A class *id* here is the 0-based class index, the ``label`` field of ``predictions.json``.
A key is first looked up as a class name (so a class named ``"7"`` is found by name), then
as an id.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dfine_cli.errors import UsageError

ClassKey = str | int
"""A class as a user names it: its name, or its 0-based index."""

ConfInput = float | str | Mapping[ClassKey, float]
"""A score threshold as a user gives it: a number, text such as ``"0.3,person=0.5"``, or a
mapping from classes to thresholds (``{"person": 0.5}``; the key ``"*"`` sets the default)."""

ClassesInput = str | Sequence[ClassKey]
"""Classes to keep: text such as ``"person,2"`` or a sequence of names and ids."""

_SHOWN_NAMES = 8  # valid names listed in an "unknown class" error


@dataclass(frozen=True)
class DetectionFilter:
    """A filter over one model's detections, by class index.

    ``default_conf``: the minimum score for classes without a threshold of their own;
    ``class_conf``: class index → minimum score; ``classes``: the class indices kept
    (``None``: all).
    """

    default_conf: float
    class_conf: Mapping[int, float] = field(default_factory=dict)
    classes: frozenset[int] | None = None

    @property
    def min_conf(self) -> float:
        """The lowest threshold of any kept class (what a detection needs at the least)."""
        values = [self.default_conf]
        values += [c for k, c in self.class_conf.items() if self.classes is None or k in self.classes]
        return min(values)

    def thresholds(self, labels: np.ndarray) -> np.ndarray:
        """Per-detection minimum score: ``labels`` ``[K]`` int → ``[K]`` float32."""
        out = np.full(len(labels), self.default_conf, dtype=np.float32)
        for index, conf in self.class_conf.items():
            out[labels == index] = conf
        return out

    def keep(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Boolean mask ``[K]`` of the detections to keep (``labels`` and ``scores`` ``[K]``)."""
        labels = np.asarray(labels)
        mask = np.asarray(scores) >= self.thresholds(labels)
        if self.classes is not None:
            mask &= np.isin(labels, list(self.classes))
        return mask

    def with_floor(self, floor: float) -> DetectionFilter:
        """The same classes, with every threshold lowered to at most ``floor``.

        A tracker sees these weaker detections too (they keep tracks alive); what is
        reported is still decided by this filter.
        """
        return DetectionFilter(
            default_conf=min(self.default_conf, floor),
            class_conf={k: min(c, floor) for k, c in self.class_conf.items()},
            classes=self.classes,
        )

    def describe(self, class_names: Sequence[str]) -> str:
        """One line for logs: ``conf 0.3 (person 0.5); classes person, car``."""
        def name(i: int) -> str:
            return class_names[i] if i < len(class_names) else str(i)

        text = f"conf {self.default_conf:g}"
        if self.class_conf:
            text += " (" + ", ".join(f"{name(k)} {c:g}" for k, c in sorted(self.class_conf.items())) + ")"
        if self.classes is not None:
            text += "; classes " + ", ".join(name(k) for k in sorted(self.classes))
        return text


@dataclass(frozen=True)
class FilterSpec:
    """A filter as the user wrote it, syntax-checked, with classes not yet resolved.

    ``default_conf``: the threshold for every class without its own (``None``: the
    caller's default); ``class_conf``: ``(class, threshold)`` pairs in the order given;
    ``classes``: the classes to keep (``None``: all).
    """

    default_conf: float | None = None
    class_conf: tuple[tuple[ClassKey, float], ...] = ()
    classes: tuple[ClassKey, ...] | None = None

    @classmethod
    def parse(cls, conf: ConfInput | None = None, classes: ClassesInput | None = None) -> FilterSpec:
        """Check the syntax of a threshold and a class list; :class:`UsageError` if wrong.

        ``conf``: ``0.4``, ``"0.4"``, ``"person=0.5,car=0.3"``, ``"0.3,person=0.5"`` (a
        default and overrides), or ``{"person": 0.5, "*": 0.3}``. ``classes``:
        ``"person,car"``, ``"0,2"`` or ``["person", 2]``.
        """
        default, pairs = _parse_conf(conf)
        return cls(default_conf=default, class_conf=pairs, classes=_parse_classes(classes))

    def resolve(self, class_names: Sequence[str], default_conf: float) -> DetectionFilter:
        """Class names and ids → indices of a model with ``class_names``.

        ``default_conf`` is used when the spec has no default of its own. Raises
        :class:`UsageError` naming an unknown class or an id out of range.
        """
        lookup = _NameLookup(class_names)
        class_conf = {lookup.index(key, "conf"): value for key, value in self.class_conf}
        classes = None
        if self.classes is not None:
            classes = frozenset(lookup.index(key, "classes") for key in self.classes)
        default = self.default_conf if self.default_conf is not None else default_conf
        return DetectionFilter(default_conf=default, class_conf=class_conf, classes=classes)


def detection_filter(
    conf: ConfInput | FilterSpec | DetectionFilter | None,
    classes: ClassesInput | None,
    class_names: Sequence[str],
    default_conf: float,
) -> DetectionFilter:
    """The :class:`DetectionFilter` for any form of ``conf`` and ``classes``.

    A ready :class:`DetectionFilter` is returned as it is (then ``classes`` must be
    ``None``); a :class:`FilterSpec` is resolved against ``class_names``; anything else is
    parsed first (:meth:`FilterSpec.parse`).
    """
    if isinstance(conf, DetectionFilter):
        if classes is not None:
            raise UsageError("give classes inside the DetectionFilter, not next to it")
        return conf
    if isinstance(conf, FilterSpec):
        spec = conf if classes is None else FilterSpec(conf.default_conf, conf.class_conf,
                                                       _parse_classes(classes))
    else:
        spec = FilterSpec.parse(conf, classes)
    return spec.resolve(class_names, default_conf)


# -- parsing ---------------------------------------------------------------------------------


def _threshold(value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"conf: {where!r} is not a number (expected a score in 0..1)") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise UsageError(f"conf: {where!r} is not a score in 0..1")
    return number


def _class_key(text: str | int, what: str) -> ClassKey:
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise UsageError(f"{what}: expected class names or ids, got {text!r}")
    if isinstance(text, int):
        return text
    key = text.strip()
    if not key:
        raise UsageError(f"{what}: empty class name")
    return key


def _parse_conf(conf: ConfInput | None) -> tuple[float | None, tuple[tuple[ClassKey, float], ...]]:
    if conf is None:
        return None, ()
    if isinstance(conf, Mapping):
        default = None
        pairs: list[tuple[ClassKey, float]] = []
        for key, value in conf.items():
            if key == "*":
                default = _threshold(value, f"*={value}")
            else:
                pairs.append((_class_key(key, "conf"), _threshold(value, f"{key}={value}")))
        return default, tuple(pairs)
    if not isinstance(conf, str):
        return _threshold(conf, str(conf)), ()
    default = None
    pairs = []
    for entry in conf.split(","):
        entry = entry.strip()
        if not entry:
            raise UsageError(f"conf: empty entry in {conf!r}")
        if "=" not in entry:
            if default is not None:
                raise UsageError(f"conf: two default thresholds in {conf!r} "
                                 "(write one number, then class=score pairs)")
            default = _threshold(entry, entry)
            continue
        name, _, score_text = entry.rpartition("=")
        pairs.append((_class_key(name, "conf"), _threshold(score_text.strip(), entry)))
    keys = [k for k, _ in pairs]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise UsageError(f"conf: class {repeated[0]!r} is given two thresholds in {conf!r}")
    return default, tuple(pairs)


def _parse_classes(classes: ClassesInput | None) -> tuple[ClassKey, ...] | None:
    if classes is None:
        return None
    items: Sequence[ClassKey] = classes.split(",") if isinstance(classes, str) else classes
    keys = tuple(_class_key(item, "classes") for item in items)
    if not keys:
        raise UsageError("classes: empty list (leave it out to keep every class)")
    return keys


class _NameLookup:
    """Class name or id → index, with errors that name the key and list valid names."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = list(class_names)
        self.by_name = {name: i for i, name in reversed(list(enumerate(self.names)))}
        self.by_folded = {name.casefold(): i for i, name in reversed(list(enumerate(self.names)))}

    def index(self, key: ClassKey, what: str) -> int:
        if isinstance(key, str):
            if key in self.by_name:
                return self.by_name[key]
            if key.casefold() in self.by_folded:
                return self.by_folded[key.casefold()]
            if not key.lstrip("-").isdigit():
                raise UsageError(self._unknown(key, what))
            key = int(key)
        if not 0 <= key < len(self.names):
            raise UsageError(f"{what}: class id {key} is out of range: the model has "
                             f"{len(self.names)} classes (ids 0..{len(self.names) - 1})")
        return key

    def _unknown(self, key: str, what: str) -> str:
        close = difflib.get_close_matches(key, self.names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = ", ".join(self.names[:_SHOWN_NAMES])
        more = f", ... ({len(self.names)} classes)" if len(self.names) > _SHOWN_NAMES else ""
        return f"{what}: unknown class {key!r}{hint}; valid names: {shown}{more}, or ids 0..{len(self.names) - 1}"
