"""Worker configs without a cluster: the command lines they build, checks
before any block runs, the server address workers are given (DAISY_HOST,
the record for workers started by hand), and ``volara-cli blockwise-worker``
refusing clearly when it has no server to go to."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import daisy.v2 as daisy
import numpy as np
import pytest
from pydantic import TypeAdapter

from conftest import write_array
from volara.blockwise import Threshold
from volara.datasets import Labels, Raw
from volara.workers import (
    EXIT_SERVER_GONE,
    AnyWorker,
    LocalWorker,
    LSFWorker,
    SlurmWorker,
    volara_cli,
)

BIN_DIR = Path(sys.executable).parent
CONFIG = Path("/logs/t-meta/config.json")
CONTEXT = dict(hostname="login1", port=4242, task_id="t", worker_id=3, logdir="/logs")


def worker_command(workdir: str) -> list[str]:
    return [
        *volara_cli(),
        "blockwise-worker",
        "-c",
        str(CONFIG),
        "--server",
        "login1:4242",
        "--worker-id",
        "3",
        "--workdir",
        workdir,
    ]


@pytest.fixture
def stand_in_programs(tmp_path, monkeypatch) -> None:
    """sbatch and bsub that exist (building a command line needs them on
    PATH) but do nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("sbatch", "bsub"):
        (bin_dir / program).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / program).chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(BIN_DIR)]))


def test_slurm_command_line(stand_in_programs, tmp_path):
    worker = SlurmWorker(
        queue="gpu", num_gpus=1, num_cpus=4, memory=8000, flags=["--time=1:00:00"]
    )
    command = worker.get_command(CONFIG, "t", daisy.Context(**CONTEXT))
    assert command == [
        "sbatch",
        "--wait",
        "--parsable",
        "--job-name=t",
        "--cpus-per-task=4",
        "--gpus=1",
        "--mem=8000",
        "--partition=gpu",
        "--output=/logs/t/worker_3.slurm.out",
        "--error=/logs/t/worker_3.slurm.err",
        "--open-mode=append",
        "--export=ALL",
        "--time=1:00:00",
        "--wrap=" + shlex.join(worker_command(str(tmp_path))),
    ]
    # the job runs the driver's own volara-cli, whatever the job's PATH
    assert Path(volara_cli()[0]).is_absolute()


def test_lsf_command_line(stand_in_programs, tmp_path):
    worker = LSFWorker(queue="short", num_gpus=2, num_cpus=8, memory=16000)
    command = worker.get_command(CONFIG, "t", daisy.Context(**CONTEXT))
    assert command == [
        "bsub",
        "-K",
        "-J",
        "t",
        "-n",
        "8",
        "-R",
        "span[hosts=1]",
        "-gpu",
        "num=2",
        "-M",
        "16000MB",
        "-R",
        "rusage[mem=16000MB]",
        "-q",
        "short",
        "-o",
        "/logs/t/worker_3.lsf.out",
        "-e",
        "/logs/t/worker_3.lsf.err",
        shlex.join(worker_command(str(tmp_path))),
    ]


def test_local_worker_launcher_prefixes_the_worker_command(tmp_path):
    worker = LocalWorker(launcher=["ssh", "node7"])
    command = worker.get_command(CONFIG, "t", daisy.Context(**CONTEXT))
    assert command == ["ssh", "node7", *worker_command(str(tmp_path))]


def test_worker_configs_round_trip_with_their_new_fields():
    adapter: TypeAdapter = TypeAdapter(AnyWorker)
    for worker in [
        LocalWorker(launcher=["ip", "netns", "exec", "ns1"], server_host="10.0.0.1"),
        SlurmWorker(connect_timeout=30, max_restarts=50),
        LSFWorker(server_host="login1", memory=100),
    ]:
        loaded = adapter.validate_json(worker.model_dump_json())
        assert type(loaded) is type(worker) and loaded == worker


def test_restart_budget_grows_with_the_number_of_workers():
    assert SlurmWorker().restart_budget(num_workers=2) == 10
    assert SlurmWorker().restart_budget(num_workers=300) == 600
    assert SlurmWorker(max_restarts=3).restart_budget(num_workers=300) == 3


def small_threshold(tmp_path: Path, **kwargs) -> Threshold:
    raw = np.random.default_rng(2).random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)
    return Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
        **kwargs,
    )


@pytest.mark.parametrize(
    "worker, program",
    [
        (SlurmWorker(), "sbatch"),
        (LSFWorker(), "bsub"),
        (LocalWorker(launcher=["no-such-launcher"]), "no-such-launcher"),
    ],
)
def test_missing_submission_program_is_refused_before_any_block(
    tmp_path, monkeypatch, worker, program
):
    # only the venv's programs: no cluster tools
    monkeypatch.setenv("PATH", str(BIN_DIR))
    task = small_threshold(tmp_path, worker_config=worker)
    with pytest.raises(FileNotFoundError, match=f"{program} is not on PATH"):
        task.run_blockwise()
    assert not task.block_ds.exists()


def test_daisy_host_is_the_address_workers_get(tmp_path, monkeypatch):
    monkeypatch.setenv("DAISY_HOST", "127.0.0.1")
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN_DIR), os.environ["PATH"]]))
    task = small_threshold(tmp_path, num_workers=2, worker_config=LocalWorker())
    state = task.run_blockwise()[task.task_name]
    assert state.completed_count == state.total_block_count == 8
    mask = task.mask.array("r")
    np.testing.assert_array_equal(mask[:], task.in_data.array("r")[:] > 0.5)
    # recorded for workers started by hand
    record = json.loads((task.meta_dir / "server.json").read_text())
    assert record["host"] == "127.0.0.1"
    # LocalWorker's workers log into their worker slot's log
    logs = "".join(p.read_text() for p in (tmp_path / "volara_logs").rglob("*.err"))
    assert f"daisy server 127.0.0.1:{record['port']} reached from 127.0.0.1" in logs


def blockwise_worker(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DAISY_CONTEXT"}
    return subprocess.run(
        [*volara_cli(), "blockwise-worker", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_worker_without_a_server_says_how_to_give_one(tmp_path):
    task = small_threshold(tmp_path)
    config = task.write_config()
    result = blockwise_worker(config)
    assert result.returncode == 1
    assert "no daisy server given: pass --server HOST:PORT" in result.stderr
    result = blockwise_worker(config, "--server", "login1")
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr


def test_worker_started_by_hand_after_the_run_exits_as_a_straggler(tmp_path):
    # the record of a run that has ended: nothing listens at its port
    task = small_threshold(tmp_path)
    config = task.write_config()
    port = closed_port()
    (config.parent / "server.json").write_text(
        json.dumps({"host": "127.0.0.1", "port": port})
    )
    result = blockwise_worker(config)
    assert result.returncode == EXIT_SERVER_GONE
    assert f"nothing listens at 127.0.0.1:{port}" in result.stderr
    assert not task.block_ds.exists()


def test_unresolvable_server_name_fails_the_worker_at_once(tmp_path):
    config = small_threshold(tmp_path).write_config()
    result = blockwise_worker(config, "--server", "no-such-host.invalid:4242")
    assert result.returncode == 1
    assert "cannot resolve 'no-such-host.invalid'" in result.stderr
    assert "server_host" in result.stderr


def test_worker_starting_after_the_run_ended_is_no_failure(tmp_path, monkeypatch):
    # worker 1 starts late, as a job that waited in the queue: worker 0 has
    # done every block and the run has ended when it tries the server
    late = 'case "$*" in *"--worker-id 1 "*) sleep 10;; esac; exec "$@"'
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN_DIR), os.environ["PATH"]]))
    worker = LocalWorker(launcher=["sh", "-c", late, "sh"])
    task = small_threshold(tmp_path, num_workers=2, worker_config=worker)
    state = task.run_blockwise()[task.task_name]
    assert state.completed_count == state.total_block_count == 8
    logs = "".join(p.read_text() for p in (tmp_path / "volara_logs").rglob("*.err"))
    assert "worker 1 of mask-threshold: nothing listens at" in logs
    # a normal end, not a failed worker with its traceback in the logs
    assert "exited with code" not in logs and "Traceback" not in logs
