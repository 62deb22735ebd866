"""numba's on-disk cache of the mutex-watershed kernel: a task compiles it
once in the driver, every worker process loads it, and an install whose
files nobody may write still caches (it would not even import otherwise).

Each check runs fresh Python processes: a compiled kernel lives in one
process's memory, the cache is what crosses between them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write_array
from volara.datasets import Affs

SOURCE = Path(__file__).parents[1] / "src" / "volara"

CALL_KERNEL = """
import json, numba
import numpy as np
from volara.kernels import mws
{before}
if {call}:
    rng = np.random.default_rng(1)
    weights = rng.uniform(-1, 1, size=(3, 4, 10, 10))
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    mws.agglom(weights.astype(np.float32), offsets)
    mws.agglom(weights, offsets)
kernels = [f for f in vars(mws).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]
print(json.dumps({{
    "file": mws.__file__,
    "cache_dir": numba.config.CACHE_DIR,
    "hits": sum(sum(f.stats.cache_hits.values()) for f in kernels),
    "misses": sum(sum(f.stats.cache_misses.values()) for f in kernels),
}}))
"""


def kernel_process(
    env: dict[str, str], before: str = "", call: bool = True, prefix=()
) -> dict:
    """Run ``before``, then (``call``) the kernel on float32 and float64
    weights, in a fresh process; its cache hits and misses (compiles),
    summed over the kernel's functions."""
    script = CALL_KERNEL.format(before=before, call=call)
    result = subprocess.run(
        [*prefix, sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_task_compiles_in_the_driver_and_workers_load(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    affs = Affs(store=tmp_path / "data.zarr" / "affs", neighborhood=[(1, 0, 0)])
    init_task = f"""
from volara.blockwise import ExtractFrags
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
task = ExtractFrags(
    db=SQLite(path={str(tmp_path / "g.db")!r}),
    affs_data=Affs(store={str(affs.store)!r}, neighborhood=[(1, 0, 0)]),
    frags_data=Labels(store={str(tmp_path / "data.zarr" / "frags")!r}),
    block_size=(4, 4, 4), context=(1, 1, 1), bias=[-0.5],
)
task.init()
"""
    affinities = np.random.default_rng(0).random((1, 8, 8, 8), np.float32)
    write_array(affs.store, affinities)
    driver = kernel_process(env, before=init_task, call=False)
    assert driver["hits"] == 0 and driver["misses"] > 0  # compiled by init
    worker = kernel_process(env)
    assert worker["misses"] == 0 and worker["hits"] > 0  # loaded, no compile


def test_a_read_only_install_caches_in_the_temporary_directory():
    """volara installed where nobody may write, run with a home that is not
    writable either: the first process compiles, the next one loads."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # root writes anywhere; without these capabilities it obeys the
        # permission bits like any user
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop the capability")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    base = Path(tempfile.mkdtemp())
    try:
        install = base / "site"
        shutil.copytree(SOURCE, install / "volara")
        shutil.rmtree(install / "volara" / "kernels" / "__pycache__", True)
        home, temporary = base / "home", base / "tmp"
        home.mkdir()
        temporary.mkdir()
        for path in [install, *install.rglob("*"), home]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")
        }
        env.update(PYTHONPATH=str(install), HOME=str(home), TMPDIR=str(temporary))
        first = kernel_process(env, prefix=prefix)
        second = kernel_process(env, prefix=prefix)
    finally:
        for path in base.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)
    assert first["file"].startswith(str(install))
    assert first["cache_dir"] == str(temporary / f"volara-numba-{os.getuid()}")
    assert first["misses"] > 0 and first["hits"] == 0
    assert second["misses"] == 0 and second["hits"] == first["misses"]
