"""What a test can read about a process from /proc (Linux): its parent, its
command line, whether it is still alive; and ``volara-cli`` as a real
subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: fields after its ")" are fixed
    return int(stat.rsplit(")", 1)[1].split()[1])


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def volara_cli(
    *args: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m volara.cli ARGS`` in ``cwd``, output captured; this
    interpreter's bin directory goes first on PATH, where local workers
    find ``volara-cli``."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    return subprocess.run(
        [sys.executable, "-m", "volara.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
