"""Cluster execution on a real SLURM cluster (single node, on this machine):
every worker is a job submitted with ``sbatch``, visible in ``squeue``,
connecting back to the daisy server of ``volara-cli run``. The README's
segmentation pipeline gives exactly the output of a local run, also when a
job is cancelled in the middle of the run; plugin tasks run on SLURM workers
too; a partition that does not exist is refused before any block runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from volara_test_plugin import Invert

from conftest import write_array
from volara.blockwise import Threshold, pipeline_config
from volara.datasets import Labels, Raw
from volara.demo import demo_pipeline
from volara.logging import set_log_basedir
from volara.sample_data import generate_sample_data
from volara.workers import SlurmWorker

from .conftest import Job, SqueueWatcher, cancel_job, run_pipeline_config

pytestmark = pytest.mark.slow

SHAPE, BLOCKS, CONTEXT = (20, 96, 96), (10, 48, 48), (5, 24, 24)
README_TASKS = [
    "fragments-extract-frags",
    "graph-aff-agglom",
    "lut-graph-mws",
    "segments-relabel",
]
RUN_TIMEOUT = 900
# a broken cluster fails a run after a few workers, not after the defaults
FAIL_FAST: dict[str, Any] = dict(connect_timeout=30, max_restarts=4)


def readme_pipeline(workdir: Path):
    generate_sample_data(
        workdir / "sample.zarr", shape=SHAPE, num_cells=20, noise=0.15, seed=1
    )
    return demo_pipeline(workdir, num_workers=2, block_size=BLOCKS, context=CONTEXT)


def with_worker_config(pipeline, worker_config) -> dict:
    """The pipeline's config with ``worker_config`` on every task, as a user
    would write it in the config file."""
    config = pipeline_config(pipeline)
    for task in config["tasks"]:
        task["worker_config"] = worker_config.model_dump(mode="json")
    return config


def segmentation(workdir: Path) -> dict[str, np.ndarray]:
    container = workdir / "sample.zarr"
    return {
        "fragments": Labels(store=container / "fragments").array("r")[:],
        "segments": Labels(store=container / "segments").array("r")[:],
        "lut": np.load(workdir / "lut.npz")["fragment_segment_lut"],
    }


def assert_same_segmentation(result: dict, expected: dict) -> None:
    for name, array in expected.items():
        np.testing.assert_array_equal(result[name], array, err_msg=name)


@pytest.fixture(scope="module")
def local_segmentation(tmp_path_factory) -> dict[str, np.ndarray]:
    """The README pipeline's output, computed in this process."""
    workdir = tmp_path_factory.mktemp("local")
    set_log_basedir(workdir / "logs")
    states = readme_pipeline(workdir).run_blockwise(
        multiprocessing=False, progress=False
    )
    assert all(s.completed_count == s.total_block_count for s in states.values())
    result = segmentation(workdir)
    assert len(np.unique(result["segments"])) > 10
    return result


def job_logs(workdir: Path, task_name: str, kind: str) -> str:
    """Every log of ``kind`` (``"slurm.err"``: the jobs', ``"err"``: the
    worker slots') of a task, concatenated."""
    logs = sorted((workdir / "logs" / task_name).glob(f"worker_*.{kind}"))
    return "\n".join(log.read_text() for log in logs)


def test_readme_pipeline_on_slurm_equals_local_run(
    slurm_partition, local_segmentation, tmp_path
):
    worker = SlurmWorker(queue=slurm_partition, num_cpus=1, memory=500, **FAIL_FAST)
    config = with_worker_config(readme_pipeline(tmp_path), worker)
    with SqueueWatcher(README_TASKS) as squeue:
        result = run_pipeline_config(config, tmp_path, RUN_TIMEOUT, README_TASKS)
    assert result.returncode == 0, result.stderr
    assert not squeue.problems, squeue.problems
    # every task's workers were SLURM jobs named after it
    assert squeue.names_seen() == set(README_TASKS)
    assert any("RUNNING" in job.states for job in squeue.jobs.values())
    assert_same_segmentation(segmentation(tmp_path), local_segmentation)
    for task_name in README_TASKS:
        # each job wrote its log into the task's log directory
        assert "daisy server" in job_logs(tmp_path, task_name, "slurm.err")


def test_cancelled_job_mid_run_still_gives_complete_equal_output(
    slurm_partition, local_segmentation, tmp_path
):
    config = with_worker_config(
        readme_pipeline(tmp_path), SlurmWorker(queue=slurm_partition, **FAIL_FAST)
    )
    cancelled: list[str] = []
    finished_first: list[str] = []

    def cancel_first_connected_worker(job: Job) -> None:
        # a job of the first task that reached the server and is processing
        # its blocks, while the other worker of the task still runs
        if cancelled or job.name != README_TASKS[0] or "RUNNING" not in job.states:
            return
        if job.job_id in finished_first or "reached" not in job.stderr_text():
            return
        if cancel_job(job.job_id) == "CANCELLED":
            cancelled.append(job.job_id)
        else:  # it ended by itself before scancel reached it: try another
            finished_first.append(job.job_id)

    with SqueueWatcher(README_TASKS, cancel_first_connected_worker) as squeue:
        result = run_pipeline_config(config, tmp_path, RUN_TIMEOUT, README_TASKS)
    assert result.returncode == 0, result.stderr
    assert not squeue.problems, squeue.problems
    assert len(cancelled) == 1, "no job of the first task was seen processing"
    assert_same_segmentation(segmentation(tmp_path), local_segmentation)
    # the driver learned how its worker ended
    reports = job_logs(tmp_path, README_TASKS[0], "err")
    assert f"SLURM job {cancelled[0]} " in reports and "CANCELLED" in reports


def test_plugin_task_on_slurm_replaces_its_cancelled_worker(slurm_partition, tmp_path):
    data = np.random.default_rng(5).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    write_array(tmp_path / "d.zarr/raw", data, chunk_shape=(2, 8, 8))
    task = Invert(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=Labels(store=tmp_path / "d.zarr/inverted"),
        block_size=[2, 8, 8],
        num_workers=1,
        worker_config=SlurmWorker(queue=slurm_partition, **FAIL_FAST),
    )
    cancelled: list[str] = []

    def cancel_running_worker(job: Job) -> None:
        # the task's only worker, cancelled as soon as it runs: all blocks
        # are left for a replacement
        if not cancelled and "RUNNING" in job.states:
            assert cancel_job(job.job_id) == "CANCELLED", "the job ended by itself"
            cancelled.append(job.job_id)

    with SqueueWatcher([task.task_name], cancel_running_worker) as squeue:
        # the config names the task by its task_type only: each job finds
        # Invert through the plugin's entry point
        result = run_pipeline_config(
            pipeline_config(task), tmp_path, RUN_TIMEOUT, [task.task_name]
        )
    assert result.returncode == 0, result.stderr
    assert not squeue.problems, squeue.problems
    assert cancelled, "the worker's job was never seen running"
    assert set(squeue.jobs) - set(cancelled), "no job replaced the cancelled one"
    inverted = Labels(store=tmp_path / "d.zarr/inverted").array("r")[:]
    np.testing.assert_array_equal(inverted, 255 - data)


def test_unknown_partition_is_refused_before_any_block(slurm_partition, tmp_path):
    write_array(tmp_path / "d.zarr/raw", np.ones((4, 8, 8), np.float32))
    task = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
        worker_config=SlurmWorker(queue="no-such-partition"),
    )
    with pytest.raises(
        ValueError,
        match=f"SlurmWorker.queue: .* no partition 'no-such-partition'; its "
        f"partitions are {slurm_partition}",
    ):
        task.run_blockwise()
    assert not task.block_ds.exists()


def test_rejected_submission_is_a_failed_worker_report(slurm_partition, tmp_path):
    # a partition passed in the flags gets past the check before the run:
    # sbatch refuses every worker, and the run ends with sbatch's reason
    write_array(tmp_path / "d.zarr/raw", np.ones((4, 8, 8), np.float32))
    task = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
        worker_config=SlurmWorker(flags=["--partition=no-such"], max_restarts=1),
    )
    with pytest.raises(RuntimeError) as raised:
        task.run_blockwise()
    message = str(raised.value)
    assert "sbatch could not submit worker" in message
    assert "invalid partition" in message.lower()
