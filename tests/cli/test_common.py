"""The one place errors become exit codes: OS failures, SIGTERM, --img-size."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from dfine_cli.cli._common import handle_errors, img_size_option
from dfine_cli.errors import EXIT_FILESYSTEM, EXIT_TERMINATED, UsageError


def _exit_of(func, capsys) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as info:
        handle_errors(func)()
    return info.value.exit_code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "runs/predict/exp/a.jpg"),
         "error: file system error: no space left on device: runs/predict/exp/a.jpg"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.onnx"),
         "error: file system error: read-only file system: /mnt/ro/x.onnx"),
        (PermissionError(errno.EACCES, "Permission denied", "out/metrics.json"),
         "error: file system error: permission denied: out/metrics.json"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "report.html"),
         "error: file system error: is a directory, not a file: report.html"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "file/x.json"),
         "error: file system error: a part of the path is a file, not a folder: file/x.json"),
        (FileExistsError(errno.EEXIST, "File exists", "runs"),
         "error: file system error: already exists: runs"),
        (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with "
                      "strerror: Read-only file system"),
         "error: file system error: read-only file system"),
    ],
    ids=["enospc", "erofs", "eacces", "eisdir", "enotdir", "eexist", "torch-writer"],
)
def test_os_failures_are_mapped_not_internal(exc, line, capsys):
    def command() -> None:
        raise exc

    code, err = _exit_of(command, capsys)
    assert code == EXIT_FILESYSTEM
    assert err == line + "\n"
    assert "internal error" not in err


def test_missing_file_is_a_data_error(capsys):
    def command() -> None:
        open("/nonexistent/dfine-input.jpg").close()

    code, err = _exit_of(command, capsys)
    assert code == 3 and err == "error: data error: no such file or folder: /nonexistent/dfine-input.jpg\n"


def test_bugs_stay_internal_errors(capsys):
    def command() -> None:
        raise ZeroDivisionError("division by zero")

    code, err = _exit_of(command, capsys)
    assert code == 1 and err.startswith("error: internal error: ZeroDivisionError")


@pytest.mark.parametrize("value", [0, -32, 33, 100, 1])
def test_img_size_outside_the_range_is_a_usage_error(value):
    with pytest.raises(UsageError, match=rf"--img-size must be a positive multiple of 32 .*got {value}$"):
        img_size_option(value)


def test_img_size_accepted():
    assert img_size_option(None) is None
    assert img_size_option(32) == (32, 32)
    assert img_size_option(640) == (640, 640)


_SIGTERM_SCRIPT = """
import os, signal, sys, time
import typer
from dfine_cli.cli._common import handle_errors, install_sigterm_handler
from dfine_cli.fileio import atomic_open

install_sigterm_handler()

def work():
    with atomic_open(sys.argv[1]) as fh:
        fh.write("partial")
        fh.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)

try:
    handle_errors(work)()
except typer.Exit as exc:
    sys.exit(exc.exit_code)
"""


def test_sigterm_removes_temporary_files_and_exits_143(tmp_path):
    res = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT, str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == EXIT_TERMINATED
    assert res.stderr == "error: terminated (SIGTERM)\n"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_in_a_forked_child_terminates_it_as_usual(tmp_path):
    code = (
        "import os, signal, time\n"
        "from dfine_cli.cli._common import install_sigterm_handler\n"
        "install_sigterm_handler()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 'exited')\n"
    )
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == str(int(signal.SIGTERM)), res.stderr


def test_sigterm_during_a_real_command(tmp_path: Path):
    """`dfine bench latency` on a preset runs long enough to be terminated in the middle."""
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfine_cli", "bench", "latency", "n", "--img-size", "320",
         "--iters", "100000", "--warmup", "0", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
    )
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_TERMINATED, err
    assert err.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdout_pipe_stops_quietly_with_141():
    """`dfine ... | head`: no 'file system error', no traceback, the shell's 141."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from dfine_cli.cli._common import handle_errors\n"
            "@handle_errors\n"
            "def emit():\n"
            "    for i in range(200000):\n"
            "        sys.stdout.write(f'row {i}\\n')\n"
            "import typer\n"
            "try:\n"
            "    emit()\n"
            "except typer.Exit as exc:\n"
            "    sys.exit(exc.exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(16)
    proc.stdout.close()  # the reader goes away, as `head` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert err.decode() == ""
