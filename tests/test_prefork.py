"""Workers forked from the prefork host (`volara.prefork`): which process
runs the blocks, what happens when a daisy worker dies, and the fallbacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import zarr

from conftest import write_array
from processes import alive, command_of, parent_of
from tasks_for_tests import PreloadingRecordingCopy, RecordingCopy
from volara import prefork
from volara.datasets import Labels

pytestmark = pytest.mark.skipif(
    not hasattr(os, "pidfd_open"), reason="the prefork host needs Linux pidfds"
)

SHAPE = (8, 16, 16)
BLOCK_SIZE = (4, 4, 4)  # 2 x 4 x 4 = 32 blocks


def recording_copy(tmp_path: Path, **options) -> RecordingCopy:
    data = (np.arange(np.prod(SHAPE), dtype=np.uint64) % 11).reshape(SHAPE)
    write_array(tmp_path / "in.zarr" / "labels", data)
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    return RecordingCopy(
        in_data=Labels(store=tmp_path / "in.zarr" / "labels"),
        out_data=Labels(store=tmp_path / "out.zarr" / "copy"),
        block_size=BLOCK_SIZE,
        num_workers=2,
        record_dir=record_dir,
        **options,
    )


def records(task: RecordingCopy) -> list[dict]:
    return [json.loads(path.read_text()) for path in task.record_dir.glob("*.json")]


def assert_copied(task: RecordingCopy) -> None:
    source = zarr.open_array(str(task.in_data.store), mode="r")[:]
    copied = zarr.open_array(str(task.out_data.store), mode="r")[:]
    np.testing.assert_array_equal(copied, source * np.uint64(2) + np.uint64(1))


def test_blocks_run_in_workers_forked_from_the_host(tmp_path):
    task = recording_copy(tmp_path)
    task.run_blockwise(progress=False)

    assert_copied(task)
    seen = records(task)
    assert len(seen) == 32
    hosts = {record["ppid"] for record in seen}
    assert len(hosts) == 1
    (host,) = hosts
    assert "volara.prefork" in seen[0]["parent_command"]
    assert parent_of(host) == os.getpid()
    workers = {record["pid"] for record in seen}
    assert 1 <= len(workers) <= 2 and os.getpid() not in workers
    # each forked worker draws its own random numbers, not copies of the
    # host's sequence
    draws: dict[int, set[float]] = {}
    for record in seen:
        draws.setdefault(record["pid"], set()).add(record["random"])
    assert len(set.union(*draws.values())) == len(seen)

    # the next run of this process forks from the same host
    task.drop(drop_outputs=True)
    for path in task.record_dir.glob("*.json"):
        path.unlink()
    task.run_blockwise(progress=False)
    assert_copied(task)
    assert {record["ppid"] for record in records(task)} == {host}


def test_the_host_calls_the_functions_tasks_name_before_it_forks(tmp_path):
    """``worker_imports`` entries ``module:function``: the host imports the
    module and calls the function once, and every forked worker inherits
    what it did (ExtractFrags loads its compiled kernel this way)."""
    # a driver of its own: this process's host may have started without it
    script = (
        "import sys; from pathlib import Path; "
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_prefork import preloading_copy; "
        f"preloading_copy(Path({str(tmp_path)!r})).run_blockwise(progress=False)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    seen = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json")]
    assert len(seen) == 32
    assert {record["preloaded_in"] for record in seen} == {seen[0]["ppid"]}
    assert "volara.prefork" in seen[0]["parent_command"]


def preloading_copy(tmp_path: Path) -> PreloadingRecordingCopy:
    copy = recording_copy(tmp_path)
    return PreloadingRecordingCopy(**copy.model_dump(exclude={"task_type"}))


def test_volara_prefork_0_runs_plain_daisy_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLARA_PREFORK", "0")
    task = recording_copy(tmp_path)
    task.run_blockwise(progress=False)

    assert_copied(task)
    seen = records(task)
    assert len(seen) == 32
    # daisy's own worker subprocesses, children of this (the driver) process
    assert {record["ppid"] for record in seen} == {os.getpid()}


def daisy_workers_of_this_process() -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and parent_of(int(entry.name)) == os.getpid()
        and "daisy._subprocess_worker" in command_of(int(entry.name))
    ]


def test_a_killed_daisy_worker_takes_its_forked_worker_along(tmp_path):
    pause_file = tmp_path / "paused.pid"
    task = recording_copy(tmp_path, pause_file=pause_file, timeout=60)
    run = threading.Thread(target=task.run_blockwise, kwargs={"progress": False})
    run.start()
    try:
        deadline = time.monotonic() + 60
        while not (pause_file.exists() and pause_file.read_text()):
            assert time.monotonic() < deadline, "no block paused"
            time.sleep(0.02)
        paused = int(pause_file.read_text())
        assert "volara.prefork" in command_of(parent_of(paused) or 0)
        for worker in daisy_workers_of_this_process():
            os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(paused):
            assert time.monotonic() < deadline, "the forked worker outlived its caller"
            time.sleep(0.02)
    finally:
        run.join(timeout=120)
    assert not run.is_alive()
    # daisy started new workers, which did every block (the paused one too)
    assert_copied(task)
    assert len(records(task)) == 32


def write_marker(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def test_a_worker_without_a_host_runs_the_task_itself(tmp_path):
    marker = tmp_path / "ran"
    worker = prefork.PreforkedWorker(
        address=str(tmp_path / "no-host.sock"),
        payload=cloudpickle.dumps(lambda: write_marker(str(marker))),
    )
    worker()
    assert marker.read_text() == str(os.getpid())


def test_a_forked_worker_that_fails_ends_its_caller_with_its_exit_code(tmp_path):
    address = prefork.host_address()

    def exit_with_3() -> None:
        raise SystemExit(3)

    worker = prefork.PreforkedWorker(
        address=address, payload=cloudpickle.dumps(exit_with_3)
    )
    with pytest.raises(SystemExit) as ended:
        worker()
    assert ended.value.code == 3


RUN_WITH_LONG_TMPDIR = """
import os
import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, {tests!r})
from test_prefork import recording_copy, records

tmp_path = Path({tmp_path!r})
task = recording_copy(tmp_path)
task.run_blockwise(progress=False)
source = zarr.open_array(str(task.in_data.store), mode="r")[:]
copied = zarr.open_array(str(task.out_data.store), mode="r")[:]
assert (copied == source * 2 + 1).all()
assert len(records(task)) == 32
# daisy's own worker subprocesses ran the blocks: children of this driver
assert {{r["ppid"] for r in records(task)}} == {{os.getpid()}}
print("blocks ran in plain daisy workers")
"""


def test_without_a_usable_socket_path_workers_start_plainly(tmp_path):
    # a Unix socket path is limited to 107 bytes: a long TMPDIR (as on some
    # clusters) leaves the host unable to start, and the run goes on without it
    long_tmpdir = tmp_path / ("t" * 60) / ("u" * 60)
    long_tmpdir.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    script = RUN_WITH_LONG_TMPDIR.format(
        tests=str(Path(__file__).parent), tmp_path=str(work)
    )
    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env={**os.environ, "TMPDIR": str(long_tmpdir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert "workers start without the prefork host" in finished.stderr
    assert "blocks ran in plain daisy workers" in finished.stdout
