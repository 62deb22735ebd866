"""Workers on another host: each worker runs in a network namespace of its
own, joined to this one by a private veth link only, so the only way to the
daisy server is the address the server advertises on that link (a worker
config's ``server_host``, or ``DAISY_HOST``). Workers are started by the
pipeline through a launcher (``ip netns exec``, standing in for ssh), or by
hand with ``volara-cli blockwise-worker``. A worker that cannot reach the
server fails within its connect timeout and the run reports why."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_array
from volara.blockwise import Threshold, pipeline_config
from volara.blockwise.registry import dump_config
from volara.datasets import Labels, Raw
from volara.workers import LocalWorker

from .conftest import VOLARA_CLI, PrivateLink

# A broken set-up fails these tests within a minute, not after the default
# connect timeout of every replacement worker.
FAIL_FAST: dict[str, Any] = dict(connect_timeout=10, max_restarts=2)


def threshold(tmp_path: Path, worker: LocalWorker) -> Threshold:
    raw = np.random.default_rng(4).random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)
    return Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
        num_workers=2,
        worker_config=worker,
    )


def worker_logs(task: Threshold) -> str:
    logs = (task.meta_dir.parent / task.task_name).glob("worker_*.err")
    return "".join(log.read_text() for log in logs)


def assert_thresholded(task: Threshold, state) -> None:
    assert state.completed_count == state.total_block_count == 8
    assert state.failed_count == 0
    raw = task.in_data.array("r")[:]
    np.testing.assert_array_equal(task.mask.array("r")[:], raw > 0.5)


def assert_all_workers_in_namespace(task: Threshold, link: PrivateLink) -> None:
    reached = re.findall(
        r"daisy server (\S+):\d+ reached from (\S+)", worker_logs(task)
    )
    assert reached, "no worker reached the server"
    assert set(reached) == {(link.host_address, link.worker_address)}


def test_workers_in_another_namespace_process_every_block(tmp_path, private_link):
    worker = LocalWorker(
        launcher=private_link.launcher(),
        server_host=private_link.host_address,
        **FAIL_FAST,
    )
    task = threshold(tmp_path, worker)
    state = task.run_blockwise()[task.task_name]
    assert_thresholded(task, state)
    assert_all_workers_in_namespace(task, private_link)


def test_daisy_host_is_advertised_to_workers_on_other_hosts(
    tmp_path, private_link, monkeypatch
):
    monkeypatch.setenv("DAISY_HOST", private_link.host_address)
    task = threshold(
        tmp_path, LocalWorker(launcher=private_link.launcher(), **FAIL_FAST)
    )
    state = task.run_blockwise()[task.task_name]
    assert_thresholded(task, state)
    assert_all_workers_in_namespace(task, private_link)


def test_worker_started_by_hand_in_another_namespace(tmp_path, private_link):
    # The run's own worker only waits (its launcher never starts volara),
    # so every block is left to the worker this test starts by hand.
    go = tmp_path / "go"
    waiting = ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.2; done", "sh"]
    task = threshold(tmp_path, LocalWorker(launcher=waiting))
    dump_config(pipeline_config(task), tmp_path / "pipeline.yaml")
    driver = subprocess.Popen(
        [VOLARA_CLI, "run", "pipeline.yaml"],
        env=dict(os.environ, DAISY_HOST=private_link.host_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        record = task.meta_dir / "server.json"
        deadline = time.monotonic() + 120
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        # only the config: the server's address comes from server.json
        worker = subprocess.run(
            [*private_link.launcher(), VOLARA_CLI, "blockwise-worker"]
            + ["-c", str(task.config_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode == 0, worker.stderr
        assert f"reached from {private_link.worker_address}" in worker.stderr
        assert "started by hand" in worker.stderr
    finally:
        go.touch()
        output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 0, output
    raw = task.in_data.array("r")[:]
    np.testing.assert_array_equal(task.mask.array("r")[:], raw > 0.5)


def test_unreachable_server_fails_within_the_connect_timeout(tmp_path, private_link):
    # an address on the worker's link that no machine has: connecting fails
    # with "no route to host" after the link layer gives up, again and again
    worker = LocalWorker(
        launcher=private_link.launcher(),
        server_host=private_link.unused_address,
        connect_timeout=3,
        max_restarts=1,
    )
    task = threshold(tmp_path, worker)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        task.run_blockwise()
    # three workers (two, one replacement), each giving up after about 3 s
    assert time.monotonic() - started < 120
    message = str(raised.value)
    assert "abandoned" in message
    assert f"cannot reach the daisy server at {private_link.unused_address}" in message
    assert "server_host" in message
    assert not task.mask.array("r")[:].any()


def test_address_refused_while_the_run_goes_on_is_a_failure(tmp_path, private_link):
    # the worker's own address: refused at once, as by a machine that is
    # not the pipeline's. The server is still there, so this is no
    # straggler of an ended run but a wrong address.
    worker = LocalWorker(
        launcher=private_link.launcher(),
        server_host=private_link.worker_address,
        max_restarts=0,
    )
    task = threshold(tmp_path, worker)
    with pytest.raises(RuntimeError) as raised:
        task.run_blockwise()
    assert f"nothing listens at {private_link.worker_address}" in str(raised.value)
