"""A block function that raises: the block is retried up to `max_retries`
times, then reported as failed (with its traceback in the execution summary
and in the worker's log, and its region in the run's result); the worker
carries on with other blocks; downstream blocks that read it never run; a
rerun retries exactly what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from reliability_checks import done_blocks, write_small_volume
from reliability_tasks import misbehaving

from tasks_for_tests import SlowCopy
from volara.datasets import Labels

BAD_BLOCK = Roi((4, 4, 4), (4, 4, 4))
MESSAGE = "deliberate failure in block at (4, 4, 4)"


def _attempts(task) -> list[str]:
    return sorted(path.name for path in task.attempts.iterdir())


def _values(dataset: Labels) -> np.ndarray:
    return dataset.array("r")[:]


def _worker_logs(task) -> str:
    log_dir = Path(task.meta_dir).parent / task.task_name
    return "".join(path.read_text() for path in sorted(log_dir.glob("worker_*.err")))


@pytest.mark.slow
def test_failing_block_is_retried_reported_and_stops_downstream(tmp_path, capfd):
    source = write_small_volume(tmp_path)
    failing = misbehaving(tmp_path, "first", source, behaviour="raise", max_retries=2)
    downstream = SlowCopy(
        in_data=failing.out_data,
        out_data=Labels(store=tmp_path / "out.zarr" / "second"),
        block_size=[4, 4, 4],
    )
    states = (failing + downstream).run_blockwise(progress=False)

    assert len(_attempts(failing)) == 3, "one attempt and two retries"
    first, second = states[failing.task_name], states[downstream.task_name]
    assert (first.completed_count, first.failed_count) == (7, 1)
    assert first.failed_blocks == [BAD_BLOCK]
    assert failing.failed_blocks() == [BAD_BLOCK]
    # the worker reported the failure and went on: no worker died
    assert first.worker_failure_count == 0
    assert MESSAGE in first.first_worker_error
    assert "raise_on_purpose" in first.first_worker_error

    # the downstream block reading the failed one never ran
    assert (second.completed_count, second.orphaned_count) == (7, 1)
    assert second.failed_count == 0 and second.failed_blocks == []
    out = _values(downstream.out_data)
    expected = (_values(source).astype(np.uint64) * 2 + 1) * 2 + 1
    assert (out[4:, 4:, 4:] == 0).all()
    out[4:, 4:, 4:] = expected[4:, 4:, 4:]
    np.testing.assert_array_equal(out, expected)
    assert done_blocks(downstream).sum() == 7

    summary = capfd.readouterr()
    summary_text = summary.out + summary.err
    assert "Execution Summary" in summary_text
    assert f"First failure in task '{failing.task_name}'" in summary_text
    assert MESSAGE in summary_text and "raise_on_purpose" in summary_text
    worker_log = _worker_logs(failing)
    assert worker_log.count(MESSAGE) >= 3, "each attempt's traceback is logged"
    assert "raise_on_purpose" in worker_log

    # fixed (the bad block works from its 4th attempt on): a rerun retries
    # the failed block and runs the orphaned one, skipping everything else
    fixed = failing.model_copy(update={"times": 3})
    states = (fixed + downstream).run_blockwise(progress=False)
    assert len(_attempts(failing)) == 4
    for state in states.values():
        assert state.skipped_count == 7 and state.completed_count == 8
        assert state.failed_count == 0 and state.failed_blocks == []
    np.testing.assert_array_equal(_values(downstream.out_data), expected)


def test_no_retries(tmp_path):
    source = write_small_volume(tmp_path)
    failing = misbehaving(tmp_path, "once", source, behaviour="raise", max_retries=0)
    state = failing.run_blockwise(progress=False)[failing.task_name]
    assert len(_attempts(failing)) == 1
    assert state.failed_count == 1 and state.failed_blocks == [BAD_BLOCK]


def test_serial_run_raises_the_block_error(tmp_path):
    # one process, no workers: the error reaches the caller (and a debugger)
    source = write_small_volume(tmp_path)
    failing = misbehaving(tmp_path, "serial", source, behaviour="raise")
    with pytest.raises(
        RuntimeError, match=MESSAGE.replace("(", r"\(").replace(")", r"\)")
    ):
        failing.run_blockwise(multiprocessing=False)
    assert len(_attempts(failing)) == 1
    done = done_blocks(failing)
    assert done[1, 1, 1] == 0, "the failed block is not marked done"
    assert done.sum() == 7, "the blocks before it are"
