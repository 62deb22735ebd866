"""Run the tutorials at the start of every documentation build.

Each tutorial is a script, ``docs/tutorials/<name>.py``, that a reader can
run by hand in an empty directory. Before Sphinx reads any page, this
extension runs every script in a fresh temporary directory, with
``VOLARA_DOCS_OUTPUT`` naming ``docs/_generated/<name>/``: there the script
leaves what its page shows (figures, the output of commands, configs it
wrote). A page includes the parts of its script with ``literalinclude`` and
the outputs with ``image`` and ``literalinclude``, so a page cannot show
code that does not run or pictures it did not make.

A script that fails stops the build with its output (there is no switch to
skip tutorials), and so does a missing PyTorch, which the Predict tutorial
needs. The scripts run one after another: each starts its own
workers, and the build machines have two cores.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

TUTORIALS = Path(__file__).parent.parent / "tutorials"
GENERATED = Path(__file__).parent.parent / "_generated"
TIMEOUT_SECONDS = 600
"""A tutorial taking longer than this is broken (each takes seconds)."""


def tutorial_scripts() -> list[Path]:
    """The tutorial scripts, in name order (helpers start with ``_``)."""
    return sorted(p for p in TUTORIALS.glob("*.py") if not p.name.startswith("_"))


def run_tutorial(script: Path, output: Path | None = None) -> float:
    """Run ``script`` in an empty directory, its outputs going to ``output``
    (default ``docs/_generated/<name>``); return the seconds it took."""
    output = GENERATED / script.stem if output is None else output
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    env = dict(os.environ)
    env["VOLARA_DOCS_OUTPUT"] = str(output)
    # the commands a tutorial runs (volara-cli) are those of this Python
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TUTORIALS), *filter(None, [env.get("PYTHONPATH")])]
    )
    # the progress bars of daisy would fill the captured output
    env.setdefault("TQDM_DISABLE", "1")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"volara-tutorial-{script.stem}-") as work:
        try:
            result = subprocess.run(
                [sys.executable, str(script)],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as e:
            raise ExtensionError(
                f"tutorial {script.name} ran longer than {TIMEOUT_SECONDS} s"
            ) from e
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        raise ExtensionError(
            f"tutorial {script.name} failed (exit code {result.returncode}); "
            f"its last output:\n{tail}"
        )
    return time.perf_counter() - start


def run_tutorials(app: Sphinx) -> None:
    if importlib.util.find_spec("torch") is None:
        # the Predict tutorial runs a network: without torch its page would
        # show nothing it made
        raise ExtensionError(
            "the Predict tutorial needs PyTorch, which the docs extra installs: "
            'pip install -e ".[docs]"'
        )
    for script in tutorial_scripts():
        seconds = run_tutorial(script)
        logger.info("tutorial %s ran in %.1f s", script.name, seconds)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", run_tutorials)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
