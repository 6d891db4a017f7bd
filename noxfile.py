"""Developer sessions: tests, lint, typecheck, the README's demo, and benchmarks.

Sessions reuse the current interpreter's packages (``venv_backend="none"``) because torch
is several GB: install once with ``pip install -e ".[dev]"``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"


@nox.session
def tests(session: nox.Session) -> None:
    """The default test suite (what CI runs)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Long tests: large model sizes, real-data runs."""
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("mypy", "src/dfine_cli")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml, docs/) into site/; warnings fail the build.

    Needs ``pip install -e ".[docs]"``.
    """
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job."""
    session.run("dfine", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    """Print the inference latency figures (torch vs ONNX Runtime, N and S)."""
    session.run("python", "benchmarks/bench_inference.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU proof: CUDA tests, parity, TensorRT engines, bench trt, AMP training, DDP.

    Needs ``pip install -e ".[dev,trt]"`` and an NVIDIA GPU (without one, every check is
    skipped and the session passes). Pass options after ``--``: ``nox -s gpu -- --out gpu.json``.
    """
    session.run("python", "benchmarks/gpu_check.py", *session.posargs)
