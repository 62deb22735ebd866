"""The driver (the process running the pipeline) dies in the middle of a
run: every block marked done has all its outputs written, the workers stop
by themselves, and rerunning the same script skips the blocks marked done
and ends with exactly the outputs of an uninterrupted run.

The run is first frozen (SIGSTOP to the driver and its workers at once),
so the test sees what a crash of the whole machine would leave, then the
driver is killed (SIGKILL) and the workers are let go."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from reliability_checks import (
    Outputs,
    assert_same_graph_rows,
    assert_same_outputs,
    count_duplicate_rows,
    done_blocks,
    done_write_rois,
    processes_in_group,
    read_graph,
    read_outputs,
    uninterrupted,  # noqa: F401  (a fixture)
)
from reliability_tasks import segmentation_pipeline, write_sample_data

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent

RUN_SCRIPT = """
import json
import sys
from pathlib import Path

import volara.logging
from reliability_tasks import segmentation_pipeline

workdir = Path(sys.argv[1])
volara.logging.set_log_basedir(workdir / "volara_logs")
pipeline = segmentation_pipeline(workdir, delay=float(sys.argv[2]))
states = pipeline.run_blockwise(progress=False)
print(json.dumps({
    name: {
        "total": state.total_block_count,
        "completed": state.completed_count,
        "skipped": state.skipped_count,
        "failed": state.failed_count,
    }
    for name, state in states.items()
}))
"""


def _start_script(workdir: Path, delay: float) -> subprocess.Popen:
    script = workdir / "run.py"
    script.write_text(RUN_SCRIPT)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
        ),
    )
    env.pop("DAISY_CONTEXT", None)
    return subprocess.Popen(
        [sys.executable, str(script), str(workdir), str(delay)],
        env=env,
        # its own process group: the test can find (and finally kill) the
        # workers it leaves behind
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _freeze_run_when(process: subprocess.Popen, enough_done, timeout=120) -> None:
    """Stop (SIGSTOP) the driver and all its workers at once when
    ``enough_done()``: what is on disk then is what a crash of the machine
    would leave."""
    deadline = time.monotonic() + timeout
    while not enough_done():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it was killed:\n{process.stderr.read()}")
        assert time.monotonic() < deadline, "the run never got far enough"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGSTOP)


def _orphans_after(group: int, seconds: float) -> list[int]:
    """Processes of ``group`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while processes_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_in_group(group)


def _check_done_blocks_are_complete(extract_frags, expected: Outputs) -> None:
    """Every block recorded as done has written all of its outputs: its
    fragments and the nodes positioned in it."""
    fragments = extract_frags.frags_data.array("r")
    nodes, _ = read_graph(extract_frags.db)
    done = done_write_rois(extract_frags)
    assert done
    for roi in done:
        np.testing.assert_array_equal(
            fragments.to_ndarray(roi),
            _crop(expected.fragments, fragments.roi, roi, fragments.voxel_size),
            f"fragments of the done block {roi}",
        )
        assert_same_graph_rows(
            _nodes_in(nodes, roi),
            _nodes_in(expected.nodes, roi),
            f"nodes of the done block {roi}",
        )


def _crop(volume: np.ndarray, volume_roi: Roi, roi: Roi, voxel_size) -> np.ndarray:
    begin = (roi.offset - volume_roi.offset) / voxel_size
    end = begin + roi.shape / voxel_size
    return volume[tuple(slice(b, e) for b, e in zip(begin, end, strict=True))]


def _nodes_in(nodes: dict, roi: Roi) -> dict:
    begin, end = np.array(roi.begin), np.array(roi.end)
    keep = np.all((nodes["position"] >= begin) & (nodes["position"] < end), axis=1)
    return {name: column[keep] for name, column in nodes.items()}


def test_driver_killed_mid_run_then_rerun(tmp_path, uninterrupted):  # noqa: F811
    write_sample_data(tmp_path)
    extract_frags, aff_agglom, graph_mws, relabel = segmentation_pipeline(
        tmp_path
    ).tasks
    total = 8

    process = _start_script(tmp_path, delay=0.4)
    group = process.pid
    try:
        _freeze_run_when(process, lambda: done_blocks(extract_frags).sum() >= 3)
        done_before = int(done_blocks(extract_frags).sum())
        assert 3 <= done_before < total, "the run must be stopped in the middle"
        assert done_blocks(relabel).sum() == 0 and not graph_mws.lut.exists()
        _check_done_blocks_are_complete(extract_frags, uninterrupted)

        # the driver dies; its workers, running again, must notice and stop
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        os.killpg(group, signal.SIGCONT)
        orphans = _orphans_after(group, seconds=30)
    finally:
        for pid in processes_in_group(group):
            os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers kept running after their driver died"
    # only the driver marks blocks done: nothing was added after its death
    assert done_blocks(extract_frags).sum() == done_before

    rerun = _start_script(tmp_path, delay=0.0)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    states = json.loads(stdout.strip().splitlines()[-1])
    assert states[extract_frags.task_name]["skipped"] == done_before
    assert states[aff_agglom.task_name]["skipped"] == 0
    for name, state in states.items():
        assert state["completed"] == state["total"] and state["failed"] == 0, name

    assert count_duplicate_rows(extract_frags.db) == (0, 0)
    assert_same_outputs(read_outputs(tmp_path, extract_frags.db), uninterrupted)
