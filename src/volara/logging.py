"""Where volara writes worker logs, task configs and block-tracking zarrs.

The directory is daisy's log directory: daisy carries it to every worker it
starts (local subprocesses and cluster jobs alike) inside the worker context,
so a task's ``meta_dir`` resolves to the same place in the driver and in every
worker. volara only supplies a default, ``./volara_logs``.

Nothing here installs logging handlers: configure `logging` in your script
(the CLI does so for its own process).
"""

from __future__ import annotations

import os
from pathlib import Path

import daisy.logging as daisy_logging

DEFAULT_LOG_BASEDIR = Path("volara_logs")

_log_basedir: Path | None = None


def set_log_basedir(path: Path | str) -> None:
    """Set the directory for worker logs and per-task meta data (block
    tracking, configs). Relative paths are resolved against the current working
    directory now, so workers that start elsewhere find the same directory."""
    global _log_basedir
    if path is None:
        raise TypeError("set_log_basedir needs a path, not None")
    _log_basedir = Path(path).absolute()
    daisy_logging.set_log_basedir(_log_basedir)


def get_log_basedir() -> Path:
    """The directory for worker logs and per-task meta data.

    Defaults to ``./volara_logs`` (absolute). Inside a worker started by daisy
    it is the driver's directory, which daisy hands over in the worker context.
    """
    if _log_basedir is not None:
        return _log_basedir
    worker_logdir = _worker_context_logdir()
    if worker_logdir is not None:
        return worker_logdir
    return DEFAULT_LOG_BASEDIR.absolute()


def __getattr__(name: str) -> Path:
    # volara 1.0.5 kept the directory in a module global; reading
    # ``volara.logging.LOG_BASEDIR`` still gives the current one
    if name == "LOG_BASEDIR":
        return get_log_basedir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _worker_context_logdir() -> Path | None:
    if "DAISY_CONTEXT" not in os.environ:
        return None
    import daisy

    try:
        logdir = daisy.Context.from_env().get("logdir", "")
    except (KeyError, ValueError):
        return None
    return Path(logdir) if logdir else None


def ensure_daisy_log_basedir() -> Path:
    """Make daisy use volara's log directory, so the workers daisy starts get
    it too. Called right before a run."""
    basedir = get_log_basedir()
    daisy_logging.set_log_basedir(basedir)
    return basedir
