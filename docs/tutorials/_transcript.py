"""What the tutorial scripts share: where to leave what their pages show,
and running a command the way a reader would type it.

The documentation build sets ``VOLARA_DOCS_OUTPUT`` (see
``docs/_ext/tutorials.py``); run by hand, a tutorial leaves its outputs in
``./tutorial_output``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

OUTPUT = Path(os.environ.get("VOLARA_DOCS_OUTPUT", "tutorial_output")).absolute()
OUTPUT.mkdir(parents=True, exist_ok=True)


def shell(command: str, name: str, cwd: Path | str = ".", env: dict | None = None):
    """Run ``command`` (as typed in a shell) in ``cwd``; fail if it fails;
    keep ``$ command`` and what it printed in ``OUTPUT/name``. Log lines
    (volara-cli's INFO logging) are left out: the page shows results."""
    result = subprocess.run(
        shlex.split(command),
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    save(name, f"$ {command}\n{result.stdout.rstrip()}\n")
    return result.stdout


def save(name: str, text: str) -> Path:
    """Keep ``text`` for the page, as ``OUTPUT/name``."""
    path = OUTPUT / name
    path.write_text(text)
    return path
