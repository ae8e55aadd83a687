"""Atomic checkpoint files loadable with ``torch.load(weights_only=True)``.

A checkpoint is a nested dict of tensors and primitive containers (dict, list, tuple, str, int, float, bool, None):
model, optimiser, scheduler and EMA state dicts, RNG states as uint8/int64 tensors, step counters and the config dict.
No pickled Python objects, so loading one never runs code from the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "remove_stale_temporaries", "save_checkpoint"]

logger = logging.getLogger(__name__)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened for syncing on every platform (Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMPORARY_SUFFIX = ".tmp"


def remove_stale_temporaries(directory: str | Path, names: Sequence[str] = ("latest.pt", "best.pt")) -> list[Path]:
    """Deletes the temporary files that interrupted :func:`save_checkpoint` calls left in `directory`.

    A save killed between creating its temporary file and the final rename (SIGKILL, power loss) leaves a
    ``.<name>.<random>.tmp`` file behind; call this when a run starts in `directory`, before it saves anything.

    Args:
        directory: the run's output directory (a missing directory has nothing to clean).
        names: the checkpoint file names whose temporaries are removed.

    Returns:
        The removed files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for name in names:
        for stale in directory.glob(f".{name}.*{TEMPORARY_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
                logger.info("removed %s, left by an interrupted checkpoint save", stale)
    return removed


def _current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Writes `state` to `path` atomically: the file is either the old checkpoint or the complete new one.

    The state is serialised into a temporary file in the same directory (same file system, so the final rename is
    atomic), flushed and fsync'ed, then moved over `path` with ``os.replace``. If anything fails before the rename, the
    temporary file is removed and an existing checkpoint at `path` is left untouched.

    Args:
        path: destination file; its parent directories are created.
        state: nested mapping of tensors and primitive containers.

    Returns:
        The destination path.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    path = Path(path)
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write checkpoint {path}: {folder} is a file, not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the mode any new file gets under the umask.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    logger.debug("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors are placed (default CPU; the trainer moves states to its device).

    Returns:
        The state dict.

    Raises:
        FileNotFoundError: when `path` does not exist.
        IsADirectoryError: when `path` is a directory.
        ValueError: when the file is not a checkpoint of tensors and primitive containers.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, expected a checkpoint file (e.g. {path}/latest.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"cannot load checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
