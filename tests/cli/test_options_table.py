"""One shape for every command: the same option names, types, short flags and defaults for the
same concept, every default visible in --help, WEIGHTS first. Walks the whole command tree, so
a new command is checked without being listed here."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from dfine_cli.backends import BACKENDS
from dfine_cli.cli.main import app
from dfine_cli.cli.options import BackendChoice, VariantChoice
from dfine_cli.detector_options import DEFAULT_CONF
from dfine_cli.devices import DEFAULT_DEVICE
from dfine_cli.models.presets import VARIANTS


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # a group (typer keeps its own copy of click)
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


ROOT = typer.main.get_command(app)
COMMANDS = dict(_commands(ROOT))
IDS = [" ".join(path) for path in COMMANDS]


def _is_option(param: Any) -> bool:
    return param.param_type_name == "option"


def _options(command: Any) -> dict[str, Any]:
    """Each visible option by its long name (``--device``)."""
    found = {}
    for param in command.params:
        if _is_option(param) and not param.hidden:
            long_names = [o for o in param.opts if o.startswith("--")]
            found[long_names[0]] = param
    return found


def _shown_default(option: Any) -> object:
    """The default --help shows: a ``show_default`` text, or the value."""
    if isinstance(option.show_default, str):
        return option.show_default
    return option.default


def test_the_tree_holds_every_command():
    assert {" ".join(p) for p in COMMANDS} >= {
        "predict", "export", "info", "train", "eval", "demo", "weights list", "weights download",
        "weights convert", "data convert", "data validate", "data stats", "data synth",
        "bench info", "bench latency", "bench trt", "bench compare", "viz report", "viz fiftyone",
    }


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_every_command_takes_verbose_and_json(path):
    options = _options(COMMANDS[path])
    assert set(options["--verbose"].opts) == {"--verbose", "-v"}, path
    assert options["--json"].is_flag and options["--json"].opts == ["--json"], path


@pytest.mark.parametrize("group", sorted(n for n, c in ROOT.commands.items() if hasattr(c, "commands")))
def test_every_group_takes_verbose_before_its_command(group):
    """`dfine bench -v latency ...` as well as `dfine -v bench latency ...` and `... latency -v`."""
    options = _options(ROOT.commands[group])
    assert set(options["--verbose"].opts) == {"--verbose", "-v"}, group
    assert set(_options(ROOT)["--verbose"].opts) == {"--verbose", "-v"}


# option -> (Python type, short flags, the default every command shows; None: per command)
SHARED: dict[str, tuple[object, set[str], object]] = {
    "--device": (str, set(), DEFAULT_DEVICE),
    "--conf": (float, set(), DEFAULT_CONF),
    "--img-size": (int, set(), None),
    "--variant": (VariantChoice, set(), None),
    "--backend": (BackendChoice, set(), BackendChoice.auto),
    "--data": (Path, set(), None),
    "--batch-size": (int, set(), None),
    "--output": (Path, {"-o"}, None),
    "--threads": (int, set(), None),
    "--max-images": (int, set(), None),
    "--split": (str, set(), None),
    "--json": (bool, set(), False),
    "--fp16": (bool, set(), False),
    "--bf16": (bool, set(), False),
    "--compile": (bool, set(), False),
}


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_shared_options_have_one_name_type_flag_and_default(path):
    for name, option in _options(COMMANDS[path]).items():
        if name not in SHARED:
            continue
        kind, shorts, default = SHARED[name]
        where = f"{' '.join(path)} {name}"
        annotation = option.type_descriptor.annotation
        if name == "--conf" and path == ("predict",):  # also per-class thresholds, as text
            assert annotation is str and float(option.default) == DEFAULT_CONF, where
            continue
        if name == "--compile" and path == ("train",):  # a run setting: unset reads --config
            assert annotation is bool and option.default is None, where
            continue
        if option.multiple:  # a repeatable option: list[kind]
            annotation = typing.get_args(annotation)[0]
        assert annotation is kind, where
        assert {o for o in option.opts + option.secondary_opts if not o.startswith("--")} == shorts, where
        if default is not None:
            assert _shown_default(option) == default, where
    assert [m.value for m in VariantChoice] == list(VARIANTS)
    assert [m.value for m in BackendChoice] == ["auto", *BACKENDS]


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_old_spellings_are_gone(path):
    names = {o for p in COMMANDS[path].params for o in p.opts}
    assert not names & {"--weights", "-w", "--coco-dir", "--engine"}, path


WEIGHTS_FIRST = {"predict", "export", "info", "eval", "weights convert", "viz report",
                 "viz fiftyone", "bench latency", "bench compare", "bench info", "bench trt"}


@pytest.mark.parametrize("path", sorted(WEIGHTS_FIRST))
def test_weights_come_first(path):
    arguments = [p for p in COMMANDS[tuple(path.split())].params if p.param_type_name == "argument"]
    assert arguments[0].metavar in ("WEIGHTS", "WEIGHTS...", "ENGINE"), path


def _expects_default(option: Any) -> bool:
    """Whether --help should show a default for ``option`` (a switch that is off shows none)."""
    if isinstance(option.show_default, str):
        return True
    if option.show_default is False or option.default is None:
        return False
    if option.is_flag:
        return bool(option.secondary_opts) or option.default is True
    return not (isinstance(option.default, (list, tuple)) and not option.default)


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_help_shows_every_default(path):
    command = COMMANDS[path]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    expected = [o for o in _options(command).values() if _expects_default(o)]
    assert text.count("[default: ") == len(expected), (path, [o.name for o in expected])
    for option in expected:
        shown = _shown_default(option)
        if isinstance(shown, bool):
            shown = option.opts[0].removeprefix("--") if shown else option.secondary_opts[0].removeprefix("--")
        elif isinstance(shown, (list, tuple)):
            continue
        assert re.search(rf"\[default: \(?{re.escape(str(getattr(shown, 'value', shown)))}\)?\]", text), (path, option.name)
    for param in command.params:  # a default written into the help text is markup rich drops
        assert "[default" not in (getattr(param, "help", None) or ""), (path, param.name)


def test_the_device_is_auto_and_conf_the_same_everywhere():
    devices = {" ".join(p): _shown_default(o["--device"]) for p, c in COMMANDS.items()
               if "--device" in (o := _options(c))}
    assert set(devices) >= {"predict", "eval", "train", "viz report", "viz fiftyone",
                            "bench latency", "bench compare", "bench trt"}
    assert set(devices.values()) == {"auto"}
    confs = {" ".join(p): float(str(o["--conf"].default)) for p, c in COMMANDS.items()
             if "--conf" in (o := _options(c))}
    assert set(confs) >= {"predict", "viz report", "viz fiftyone"}
    assert set(confs.values()) == {DEFAULT_CONF}


def test_root_help_starts_without_torch():
    """`dfine --help` and typos answer at once: importing the command tree loads no torch."""
    code = "import sys, dfine_cli.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("args", [("predict", "w.pth", "a.jpg"), ("eval", "w.pth", "--data", "d"),
                                  ("train", "--data", "d"), ("bench", "latency", "n")])
def test_a_bad_device_spelling_is_a_usage_error_while_parsing(args):
    result = CliRunner().invoke(app, [*args, "--device", "gpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "invalid device 'gpu' (use auto, cpu, mps, cuda or cuda:N)" in " ".join(result.stderr.split())
