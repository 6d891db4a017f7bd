"""The official D-FINE package from a checkout, for the benchmarks that run it side by side.

The checkout is used read-only and only by the benchmark scripts; nothing in ``dfine_cli``
imports it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any


class _NoWriter:
    """Stands in for TensorBoard's ``SummaryWriter``: accepts every call, writes nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _no_flops(**kwargs: Any) -> tuple[str, str, str]:
    return "-", "-", "-"


#: Modules the official package imports at load time that neither its models, losses and
#: optimizers nor its solver's training loop need: (module, attribute, stand-in).
_OPTIONAL_IMPORTS: tuple[tuple[str, str, Any], ...] = (
    ("torch.utils.tensorboard", "SummaryWriter", _NoWriter),
    ("calflops", "calculate_flops", _no_flops),
    ("wandb", "init", None),
    ("loguru", "logger", logging.getLogger("official")),
)


def official_package(repo: Path) -> Any:
    """The official ``src`` package of the checkout ``repo`` (``src.core``, ``src.optim``...).

    Its modules import TensorBoard, calflops, wandb and loguru at load time; where one is not
    installed a stand-in takes its place (a writer that writes nothing, a FLOP counter that
    counts nothing, a plain logger), enough for its solver to train and evaluate.
    """
    for name, attr, stand_in in _OPTIONAL_IMPORTS:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            setattr(stub, attr, stand_in)
            sys.modules[name] = stub
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    import src  # type: ignore[import-not-found]
    import src.core  # loads the registry the configurations use
    import src.optim

    return src
