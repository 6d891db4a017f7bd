"""Turn what a user typed where a checkpoint is expected into a local file or folder.

Order: a local path that exists always wins; then ``hf:<org>/<name>[@revision]`` (a
transformers hub repository, through ``huggingface_hub``, cached under ``$DFINE_HOME/huggingface``);
then a name of :data:`~dfine_cli.hub.registry.WEIGHTS` (downloaded once into the cache).
Anything else is returned unchanged, and the caller reports the missing file.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfine_cli.errors import CheckpointError, DependencyError, UsageError
from dfine_cli.hub.registry import WEIGHTS, dfine_home, lookup

HF_PREFIX = "hf:"
HF_EXTRA = "hub"
_HF_PATTERNS = ["*.json", "*.safetensors"]


def is_weights_name(text: str | os.PathLike[str]) -> bool:
    """True for a table name or an ``hf:`` id (whether or not a file of that name exists)."""
    value = str(text)
    return value.startswith(HF_PREFIX) or lookup(value) is not None


def resolve_weights(path_or_name: str | os.PathLike[str]) -> Path:
    """The local file or folder for a path, an official weights name or an ``hf:`` id.

    Downloads (with progress on stderr) when a name is not cached yet; raises
    :class:`~dfine_cli.errors.DependencyError` (exit 6) when that fails, and
    :class:`~dfine_cli.errors.CheckpointError` for a bare word that is neither a file nor a
    known name.
    """
    text = str(path_or_name)
    path = Path(path_or_name)
    if path.exists():
        return path
    if text.startswith(HF_PREFIX):
        return fetch_hf(text[len(HF_PREFIX):])
    entry = lookup(text)
    if entry is not None:
        from dfine_cli.hub.download import fetch_entry

        return fetch_entry(entry)
    if not path.suffix and len(path.parts) == 1:
        raise CheckpointError(
            f"checkpoint not found: {text} is neither a file nor a known weights name "
            f"(names: dfine weights list; e.g. {next(iter(WEIGHTS))})"
        )
    return path


def fetch_hf(repo: str) -> Path:
    """Download (or reuse) a transformers D-FINE repository; returns its local folder.

    ``repo`` is ``org/name`` with an optional ``@revision``. The endpoint is ``$HF_ENDPOINT``
    (read at call time) or the Hugging Face Hub.
    """
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UsageError(f"hf: ids look like hf:org/name, got hf:{repo}")
    try:
        import huggingface_hub
    except ImportError as exc:
        raise DependencyError(
            f"hf:{repo} needs the 'huggingface_hub' package; install it with: "
            f"pip install 'dfine[{HF_EXTRA}]'"
        ) from exc
    cache = dfine_home() / "huggingface"
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, cache_dir=cache, allow_patterns=_HF_PATTERNS,
            endpoint=endpoint,
        )
    except Exception as exc:  # the hub raises many types (HTTP, offline, missing repo)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        url = f"{(endpoint or 'https://huggingface.co').rstrip('/')}/{repo_id}"
        raise DependencyError(
            f"could not download hf:{repo} from {url} ({type(exc).__name__}: {reason}); "
            f"download the repository's config.json and model.safetensors by hand into a folder "
            f"and pass that folder instead"
        ) from exc
    return Path(folder)
