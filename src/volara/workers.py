"""How a task's workers are started: locally, or as SLURM / LSF jobs.

Without a worker config, daisy starts each worker as a local subprocess that
runs the task's block function directly. With one, each worker slot runs the
command from `Worker.get_command`: ``volara-cli blockwise-worker -c
<config.json>``, wrapped in the cluster's submission command. The worker
finds its daisy server through the ``DAISY_CONTEXT`` environment variable,
which the submission command passes on.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from .utils import StrictBaseModel


class Worker(StrictBaseModel):
    """Resources of one worker. The base class runs the worker as a local
    process (like `LocalWorker`)."""

    queue: str | None = None
    """Cluster queue / partition to submit to (``None``: the default one)."""
    num_gpus: int = Field(default=0, ge=0)
    """GPUs per worker."""
    num_cpus: int = Field(default=1, ge=1)
    """CPU cores per worker."""
    memory: int | None = Field(default=None, ge=1)
    """Memory per worker in MB (``None``: the cluster's default)."""
    flags: list[str] = Field(default_factory=list)
    """Extra command line flags passed to the submission command as they are."""

    def worker_command(self, config_path: Path) -> list[str]:
        """The command that runs one worker of the task saved at ``config_path``."""
        return ["volara-cli", "blockwise-worker", "-c", str(config_path)]

    def get_command(self, config_path: Path, task_name: str) -> list[str]:
        """The full command line that starts one worker."""
        return self.worker_command(config_path)

    def log_files(self, log_dir: Path, worker_id: int | str) -> tuple[Path, Path]:
        return (
            log_dir / f"worker_{worker_id}.cluster.out",
            log_dir / f"worker_{worker_id}.cluster.err",
        )


class LocalWorker(Worker):
    """Run each worker as ``volara-cli blockwise-worker`` on this machine, from
    the task's saved config (exactly what a cluster job runs)."""

    worker_type: Literal["local"] = "local"


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(
            f"{program} is not on PATH: this worker config submits jobs with "
            f"{program}. Run on a machine of the cluster, or drop worker_config "
            "to run locally."
        )
    return path


class SlurmWorker(Worker):
    """Submit each worker as a SLURM job with ``sbatch --wait``; the job's
    lifetime is the worker's."""

    worker_type: Literal["slurm"] = "slurm"

    def get_command(self, config_path: Path, task_name: str) -> list[str]:
        _require("sbatch")
        command = ["sbatch", "--wait", f"--job-name={task_name}"]
        command.append(f"--cpus-per-task={self.num_cpus}")
        if self.num_gpus > 0:
            command.append(f"--gpus={self.num_gpus}")
        if self.memory is not None:
            command.append(f"--mem={self.memory}")
        if self.queue:
            command.append(f"--partition={self.queue}")
        command += ["--export=ALL", *self.flags]
        command.append(
            "--wrap=" + subprocess.list2cmdline(self.worker_command(config_path))
        )
        return command


class LSFWorker(Worker):
    """Submit each worker as an LSF job with ``bsub -K`` (wait for the job)."""

    worker_type: Literal["lsf"] = "lsf"

    def get_command(self, config_path: Path, task_name: str) -> list[str]:
        _require("bsub")
        command = ["bsub", "-K", "-J", task_name, "-n", str(self.num_cpus)]
        if self.num_gpus > 0:
            command += ["-gpu", f"num={self.num_gpus}"]
        if self.memory is not None:
            command += ["-M", f"{self.memory}MB"]
        if self.queue:
            command += ["-q", self.queue]
        command += [*self.flags, *self.worker_command(config_path)]
        return command


def _worker_tag(value: Any) -> str:
    # volara 1 configs carry no tag: a plain Worker ran locally.
    if isinstance(value, dict):
        return value.get("worker_type", "local")
    return getattr(value, "worker_type", "local")


AnyWorker = Annotated[
    Annotated[LocalWorker, Tag("local")]
    | Annotated[SlurmWorker, Tag("slurm")]
    | Annotated[LSFWorker, Tag("lsf")],
    Discriminator(_worker_tag),
]
"""Any worker config, resolved from JSON by ``worker_type`` (default local)."""
