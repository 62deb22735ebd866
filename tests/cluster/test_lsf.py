"""LSFWorker through a stand-in ``bsub``: no LSF cluster can be had here, so a
small script on PATH plays ``bsub -K``: it records its command line, runs the
job's command on this machine with its output appended to the ``-o``/``-e``
files, and returns the job's exit code. What is tested is the command line
volara builds and everything around it: workers started from it process the
blocks, their logs land in the task's log directory, a job that dies is
replaced. Whether a real LSF accepts each option is not tested here."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from volara_test_plugin import Invert

from conftest import write_array
from volara.datasets import Labels, Raw
from volara.workers import LSFWorker, volara_cli

# A job that the stand-in "kills" before it runs, as LSF does to a job it
# preempts or that a user bkills: exit code 130, nothing processed.
STAND_IN_BSUB = """#!{python}
import fcntl, json, os, subprocess, sys

args = sys.argv[1:]
command = args.pop()
options, flags = {{}}, []
while args:
    name = args.pop(0)
    if name == "-K":
        flags.append(name)
    else:
        options.setdefault(name, []).append(args.pop(0))
with open(os.environ["STAND_IN_BSUB_LOG"], "a+") as log:
    fcntl.flock(log, fcntl.LOCK_EX)  # job ids count the calls
    log.seek(0)
    count = len(log.readlines()) + 1
    log.write(json.dumps(sys.argv[1:]) + "\\n")
print(f"Job <{{count}}> is submitted to queue <{{options.get('-q', ['normal'])[0]}}>.")
print("<<Waiting for dispatch ...>>", flush=True)
if count <= int(os.environ.get("STAND_IN_BSUB_KILL_FIRST", "0")):
    print("<<Job is killed>>")
    sys.exit(130)
with open(options["-o"][0], "a") as out, open(options["-e"][0], "a") as err:
    code = subprocess.call(["/bin/sh", "-c", command], stdout=out, stderr=err)
print("<<Job is finished>>")
sys.exit(code)
"""


@pytest.fixture
def bsub_log(tmp_path, monkeypatch) -> Path:
    """Put the stand-in bsub on PATH; returns the file its calls go to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bsub = bin_dir / "bsub"
    bsub.write_text(STAND_IN_BSUB.format(python=sys.executable))
    bsub.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    log = tmp_path / "bsub_calls.jsonl"
    monkeypatch.setenv("STAND_IN_BSUB_LOG", str(log))
    return log


def invert_task(tmp_path: Path, worker: LSFWorker, num_workers: int) -> Invert:
    data = np.random.default_rng(9).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    write_array(tmp_path / "d.zarr/raw", data)
    return Invert(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=Labels(store=tmp_path / "d.zarr/inverted"),
        block_size=[2, 8, 8],
        num_workers=num_workers,
        worker_config=worker,
    )


def assert_inverted(tmp_path: Path) -> None:
    data = Raw(store=tmp_path / "d.zarr/raw").array("r")[:]
    inverted = Labels(store=tmp_path / "d.zarr/inverted").array("r")[:]
    np.testing.assert_array_equal(inverted, 255 - data)


def test_plugin_task_runs_on_lsf_workers(bsub_log, tmp_path):
    worker = LSFWorker(queue="short", num_cpus=2, memory=1000, flags=["-W", "60"])
    task = invert_task(tmp_path, worker, num_workers=2)
    state = task.run_blockwise()[task.task_name]
    assert state.completed_count == state.total_block_count == 8
    assert_inverted(tmp_path)

    calls = [json.loads(line) for line in bsub_log.read_text().splitlines()]
    assert len(calls) >= 1
    log_dir = tmp_path / "volara_logs" / task.task_name
    for call in calls:
        *options, command = call
        worker_id = shlex.split(command)[shlex.split(command).index("--worker-id") + 1]
        assert options == [
            "-K",
            "-J",
            task.task_name,
            "-n",
            "2",
            "-R",
            "span[hosts=1]",
            "-M",
            "1000MB",
            "-R",
            "rusage[mem=1000MB]",
            "-q",
            "short",
            "-o",
            str(log_dir / f"worker_{worker_id}.lsf.out"),
            "-e",
            str(log_dir / f"worker_{worker_id}.lsf.err"),
            "-W",
            "60",
        ]
        # the job runs this installation's volara-cli on the saved config,
        # which names the plugin task by its task_type only
        assert shlex.split(command)[:4] == [
            *volara_cli(),
            "blockwise-worker",
            "-c",
            str(task.config_file),
        ]
        job_log = (log_dir / f"worker_{worker_id}.lsf.err").read_text()
        assert "daisy server" in job_log or "nothing listens" in job_log
    assert json.loads(task.config_file.read_text())["task_type"] == "test-invert"


def test_killed_lsf_job_is_replaced(bsub_log, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_BSUB_KILL_FIRST", "1")
    task = invert_task(tmp_path, LSFWorker(), num_workers=1)
    state = task.run_blockwise()[task.task_name]
    assert state.completed_count == state.total_block_count
    assert state.worker_failure_count == 1
    assert_inverted(tmp_path)
    assert len(bsub_log.read_text().splitlines()) >= 2
    # the driver reports how the job ended in the worker slot's log
    reports = "".join(
        p.read_text() for p in (tmp_path / "volara_logs" / task.task_name).glob("*.err")
    )
    assert "LSF job 1 (worker 0 of inverted-test-invert) ended with exit code 130" in (
        reports
    )
