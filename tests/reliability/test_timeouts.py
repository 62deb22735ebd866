"""A block that hangs: its worker is killed after the task's `timeout` and
the block retried on a new worker (and failed once `max_retries` is used
up); each task has its own timeout."""

from __future__ import annotations

import time

import pytest
from funlib.geometry import Roi
from reliability_checks import alive, write_small_volume
from reliability_tasks import misbehaving

from volara.blockwise.blockwise import DEFAULT_BLOCK_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow


def _attempt_pids(task) -> list[int]:
    """Process ids of the attempts at the bad block, in order."""
    names = sorted(task.attempts.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return [int(path.name.rsplit("-", 1)[1]) for path in names]


def test_hanging_blocks_are_killed_after_their_tasks_timeout(tmp_path):
    source = write_small_volume(tmp_path)
    # hangs once, for longer than the test may take
    hangs_once = misbehaving(
        tmp_path, "once", source, behaviour="hang", times=1, timeout=2
    )
    # hangs on every attempt: two attempts, then the block is failed
    hangs_always = misbehaving(
        tmp_path, "always", source, behaviour="hang", timeout=2, max_retries=1
    )
    # slow once (4 s), with the default timeout of an hour: left alone
    slow_once = misbehaving(
        tmp_path, "slow", source, behaviour="hang", times=1, hang_seconds=4
    )
    assert slow_once.block_timeout == DEFAULT_BLOCK_TIMEOUT_SECONDS

    start = time.monotonic()
    states = (hangs_once | hangs_always | slow_once).run_blockwise(progress=False)
    assert time.monotonic() - start < 90, "a hanging block was not cut short"

    once = states[hangs_once.task_name]
    assert once.completed_count == 8 and once.failed_count == 0
    assert once.timeout_reclaim_count == 1
    killed, retried = _attempt_pids(hangs_once)
    assert killed != retried, "the retry runs in a new worker"
    assert not alive(killed)

    always = states[hangs_always.task_name]
    assert always.completed_count == 7 and always.failed_count == 1
    assert always.timeout_reclaim_count == 2
    assert always.failed_blocks == [Roi((4, 4, 4), (4, 4, 4))]
    assert len(_attempt_pids(hangs_always)) == 2
    assert not any(alive(pid) for pid in _attempt_pids(hangs_always))

    slow = states[slow_once.task_name]
    assert slow.completed_count == 8 and slow.timeout_reclaim_count == 0
    assert len(_attempt_pids(slow_once)) == 1, "the slow block was not retried"
