"""Where a task's workers run: local processes, SLURM or LSF jobs, or
processes started through any launcher (ssh, srun, ip netns exec, ...).

Without a worker config, daisy starts each worker as a local subprocess. With
one, daisy calls `Worker.start` once per worker, in a process of its own, and
counts the worker alive for as long as that call blocks. The call runs

    <volara-cli> blockwise-worker -c <meta dir>/config.json \\
        --server HOST:PORT --worker-id N --workdir <the driver's directory>

on this machine (`LocalWorker`), through a launcher (`LocalWorker.launcher`),
or as a job through ``sbatch --wait`` / ``bsub -K`` (`SlurmWorker`,
`LSFWorker`). The command line carries everything the worker needs to find
the daisy server, so a job needs nothing from the submitting environment.

When a worker ends with an error (a crash, ``scancel``, preemption, a server
it cannot reach), daisy hands the block it held to another worker and starts
a replacement, up to `Worker.max_restarts` times per run; after that the
task's remaining blocks are reported as orphaned.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag

from .utils import StrictBaseModel

DEFAULT_MAX_RESTARTS = 10
DEFAULT_CONNECT_TIMEOUT_SECONDS = 60.0
EXIT_SERVER_GONE = 75
"""Exit code of a worker that found no daisy server at its address (sysexits'
EX_TEMPFAIL): the run ended before the worker started, or the address is
wrong. The worker's starter tells the two apart."""
SERVER_RECORD = "server.json"
"""File in a task's meta directory naming the daisy server of its current
run (``{"host": ..., "port": ...}``), for workers started by hand."""


def volara_cli() -> list[str]:
    """The ``volara-cli`` of this interpreter, by absolute path: jobs must run
    the same installation as the driver, whatever their PATH says."""
    script = Path(sys.executable).parent / "volara-cli"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "volara.cli"]


class Worker(StrictBaseModel):
    """Resources and start-up of one worker. The base class runs the worker as
    a local process (like `LocalWorker`); volara 1 configs without a
    ``worker_type`` load as `LocalWorker`."""

    queue: str | None = None
    """Cluster queue (LSF) or partition (SLURM) to submit to. ``None``: the
    cluster's default."""
    num_gpus: int = Field(default=0, ge=0)
    """GPUs per worker. Requested from the cluster; a local worker ignores
    it."""
    num_cpus: int = Field(default=1, ge=1)
    """CPU cores per worker. A task with ``num_cache_workers`` threads per
    worker can use up to that many cores."""
    memory: int | None = Field(default=None, ge=1)
    """Memory per worker in MB. ``None``: the cluster's default."""
    flags: list[str] = Field(default_factory=list)
    """Extra options for the submission command, passed as they are, e.g.
    ``["--time=2:00:00", "--account=lab"]`` for sbatch."""
    server_host: str | None = None
    """Address of the machine running the pipeline as these workers can reach
    it, e.g. the login node's name on the cluster network. ``None``: the
    ``DAISY_HOST`` environment variable of the pipeline's process if set, else
    what daisy detects (this machine's name or its default-route address)."""
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT_SECONDS, gt=0)
    """Seconds a started worker keeps trying to reach the daisy server before
    it exits with an error naming the address it tried."""
    max_restarts: int | None = Field(default=None, ge=0)
    """How many times in one run a worker that ended with an error (crashed,
    cancelled, preempted, could not reach the server) is replaced before the
    task is given up. ``None``: 10, or twice ``num_workers`` if that is
    more."""

    # ------------------------------------------------------------ commands

    def worker_command(self, config_path: Path, context: Any = None) -> list[str]:
        """The command that runs one worker of the task saved at
        ``config_path``. With a daisy ``context`` it names the server and the
        worker id; without, the worker reads them from ``DAISY_CONTEXT``."""
        command = [*volara_cli(), "blockwise-worker", "-c", str(config_path)]
        if context is not None:
            command += [
                "--server",
                f"{context['hostname']}:{context['port']}",
                "--worker-id",
                str(context["worker_id"]),
                "--workdir",
                os.getcwd(),
            ]
        return command

    def get_command(
        self, config_path: Path, task_name: str, context: Any = None
    ) -> list[str]:
        """The full command line that starts one worker."""
        return self.worker_command(config_path, context)

    def check_available(self) -> None:
        """Raise if workers cannot be started from here (a submission command
        missing, a queue that does not exist). Called before any block runs."""

    def restart_budget(self, num_workers: int) -> int:
        """How many failed workers daisy replaces in one run."""
        if self.max_restarts is not None:
            return self.max_restarts
        return max(DEFAULT_MAX_RESTARTS, 2 * num_workers)

    # ------------------------------------------------------------ running

    def spawn_function(self, config_path: Path, task_name: str) -> Callable[..., None]:
        """The function daisy calls once per worker, with the worker's
        context, in a process of its own; it returns when the worker ends."""
        (config_path.parent / SERVER_RECORD).unlink(missing_ok=True)
        worker = self

        def start_worker(*, context: Any) -> None:
            worker.start(config_path, task_name, context)

        return start_worker

    def advertised(self, context: Any, config_path: Path) -> Any:
        """The worker's context with the server address it should use, which
        is also recorded for workers started by hand."""
        if self.server_host:
            context = context.copy()
            context["hostname"] = self.server_host
        record_server(config_path.parent / SERVER_RECORD, context)
        return context

    def start(self, config_path: Path, task_name: str, context: Any) -> None:
        """Run one worker to its end; raise `RuntimeError` if it failed."""
        _stop_on_sigterm()
        failure = self.run_to_end(
            config_path, task_name, self.advertised(context, config_path)
        )
        if failure is None:
            return
        returncode, description = failure
        # A worker whose job started after the run had drained finds the
        # server gone; nothing was lost. If the server is still there, the
        # worker was given an address it cannot use: a real failure.
        if returncode == EXIT_SERVER_GONE and not server_listens(
            context["hostname"], int(context["port"])
        ):
            return
        raise RuntimeError(description)

    def run_to_end(
        self, config_path: Path, task_name: str, context: Any
    ) -> tuple[int, str] | None:
        """Start one worker and wait for its end. Returns its exit code and a
        description of what happened if it failed, else ``None``."""
        command = self.get_command(config_path, task_name, context)
        env = dict(os.environ, DAISY_CONTEXT=context.to_env())
        returncode = subprocess.run(command, env=env).returncode
        if returncode == 0:
            return None
        return returncode, (
            f"worker {context['worker_id']} of {task_name} exited with code "
            f"{returncode}: {shlex.join(command)}"
        )


class LocalWorker(Worker):
    """Run each worker as ``volara-cli blockwise-worker`` from the task's saved
    config (exactly what a cluster job runs): on this machine, or wherever
    `launcher` starts it."""

    worker_type: Literal["local"] = "local"
    launcher: list[str] = Field(default_factory=list)
    """A command that runs the worker elsewhere, with the worker's command
    appended as arguments: ``["ssh", "node7"]``, ``["srun", "-N1", "-n1"]``,
    ``["ip", "netns", "exec", "ns1"]``. It must block until the worker ends.
    The worker command names the config file, the working directory and the
    server by absolute path and address, so these must be valid where it runs
    (a shared file system; `server_host` if this machine's detected address is
    not reachable from there). Empty: run on this machine."""

    def get_command(
        self, config_path: Path, task_name: str, context: Any = None
    ) -> list[str]:
        return [*self.launcher, *self.worker_command(config_path, context)]

    def check_available(self) -> None:
        if self.launcher:
            _require(self.launcher[0], "LocalWorker.launcher")


class _BatchWorker(Worker):
    """A worker submitted as a batch job whose submission command blocks
    until the job ends."""

    scheduler: ClassVar[str]
    submit_program: ClassVar[str]
    cancel_program: ClassVar[str]
    job_id_pattern: ClassVar[re.Pattern[str]]
    log_suffix: ClassVar[str]

    def job_log_files(self, log_dir: Path, worker_id: int | str) -> tuple[Path, Path]:
        """Where the job of worker ``worker_id`` writes its output and errors."""
        stem = f"worker_{worker_id}.{self.log_suffix}"
        return log_dir / f"{stem}.out", log_dir / f"{stem}.err"

    def submission_command(
        self, task_name: str, command: str, out_log: Path | None, err_log: Path | None
    ) -> list[str]:
        """The submission command line running the shell command ``command``
        as one job, logging to ``out_log`` and ``err_log`` if given."""
        raise NotImplementedError

    def get_command(
        self, config_path: Path, task_name: str, context: Any = None
    ) -> list[str]:
        _require(self.submit_program, type(self).__name__)
        out_log = err_log = None
        if context is not None:
            log_dir = task_log_dir(context, config_path, task_name)
            out_log, err_log = self.job_log_files(log_dir, context["worker_id"])
        command = shlex.join(self.worker_command(config_path, context))
        return self.submission_command(task_name, command, out_log, err_log)

    def job_state(self, job_id: str) -> str | None:
        """How the scheduler describes the job's end, if it still knows."""
        return None

    def run_to_end(
        self, config_path: Path, task_name: str, context: Any
    ) -> tuple[int, str] | None:
        log_dir = task_log_dir(context, config_path, task_name)
        log_dir.mkdir(parents=True, exist_ok=True)
        _, err_log = self.job_log_files(log_dir, context["worker_id"])
        err_start = err_log.stat().st_size if err_log.exists() else 0
        command = self.get_command(config_path, task_name, context)
        env = dict(os.environ, DAISY_CONTEXT=context.to_env())
        job_id, returncode = self._submit_and_wait(command, env)
        if returncode == 0:
            return None
        worker = f"worker {context['worker_id']} of {task_name}"
        if job_id is None:
            return returncode, (
                f"{self.submit_program} could not submit {worker} (exit code "
                f"{returncode}, its error is above): {shlex.join(command)}"
            )
        state = self.job_state(job_id)
        return returncode, (
            f"{self.scheduler} job {job_id} ({worker}) ended with exit code "
            f"{returncode}" + (f" ({state})" if state else "") + "; its errors "
            f"are in {err_log}" + _tail(err_log, err_start)
        )

    def _submit_and_wait(
        self, command: list[str], env: dict[str, str]
    ) -> tuple[str | None, int]:
        job_id = None
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None  # stdout=PIPE
            for line in process.stdout:
                # echoed into the worker slot's log: which job is this worker
                print(line, end="", flush=True)
                match = self.job_id_pattern.search(line)
                if job_id is None and match:
                    job_id = match.group(1)
            return job_id, process.wait()
        except BaseException:
            # the run is being stopped: take the job with it
            if job_id is not None:
                subprocess.run(
                    [self.cancel_program, job_id], capture_output=True, timeout=30
                )
            process.kill()
            raise


class SlurmWorker(_BatchWorker):
    """Submit each worker as a SLURM job with ``sbatch --wait``; the job's
    lifetime is the worker's. The job's output goes to
    ``worker_<id>.slurm.out`` / ``.err`` in the task's log directory."""

    worker_type: Literal["slurm"] = "slurm"
    scheduler: ClassVar[str] = "SLURM"
    submit_program: ClassVar[str] = "sbatch"
    cancel_program: ClassVar[str] = "scancel"
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(\d+)")
    log_suffix: ClassVar[str] = "slurm"

    def submission_command(
        self, task_name: str, command: str, out_log: Path | None, err_log: Path | None
    ) -> list[str]:
        sbatch = ["sbatch", "--wait", "--parsable", f"--job-name={task_name}"]
        sbatch.append(f"--cpus-per-task={self.num_cpus}")
        if self.num_gpus > 0:
            sbatch.append(f"--gpus={self.num_gpus}")
        if self.memory is not None:
            sbatch.append(f"--mem={self.memory}")
        if self.queue:
            sbatch.append(f"--partition={self.queue}")
        if out_log is not None and err_log is not None:
            sbatch += [f"--output={out_log}", f"--error={err_log}"]
            sbatch.append("--open-mode=append")
        return [*sbatch, "--export=ALL", *self.flags, f"--wrap={command}"]

    def check_available(self) -> None:
        _require("sbatch", "SlurmWorker")
        if self.queue and shutil.which("sinfo"):
            partitions = _output(["sinfo", "--noheader", "--format=%R"], "SLURM")
            if self.queue not in partitions.split():
                raise ValueError(
                    f"SlurmWorker.queue: this cluster has no partition "
                    f"{self.queue!r}; its partitions are "
                    f"{', '.join(sorted(set(partitions.split()))) or 'none'}"
                )

    def job_state(self, job_id: str) -> str | None:
        try:
            fields = _output(["scontrol", "show", "job", "--oneliner", job_id], "")
        except OSError:
            return None
        found = dict(re.findall(r"\b(JobState|Reason)=(\S+)", fields))
        if "JobState" not in found:
            return None
        reason = found.get("Reason", "None")
        return found["JobState"] + (f", {reason}" if reason != "None" else "")


class LSFWorker(_BatchWorker):
    """Submit each worker as an LSF job with ``bsub -K`` (wait for the job).
    The job's output goes to ``worker_<id>.lsf.out`` / ``.err`` in the task's
    log directory."""

    worker_type: Literal["lsf"] = "lsf"
    scheduler: ClassVar[str] = "LSF"
    submit_program: ClassVar[str] = "bsub"
    cancel_program: ClassVar[str] = "bkill"
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"Job <(\d+)>")
    log_suffix: ClassVar[str] = "lsf"

    def submission_command(
        self, task_name: str, command: str, out_log: Path | None, err_log: Path | None
    ) -> list[str]:
        bsub = ["bsub", "-K", "-J", task_name, "-n", str(self.num_cpus)]
        # one worker is one process: keep its cores on one host
        bsub += ["-R", "span[hosts=1]"]
        if self.num_gpus > 0:
            bsub += ["-gpu", f"num={self.num_gpus}"]
        if self.memory is not None:
            bsub += ["-M", f"{self.memory}MB", "-R", f"rusage[mem={self.memory}MB]"]
        if self.queue:
            bsub += ["-q", self.queue]
        if out_log is not None and err_log is not None:
            bsub += ["-o", str(out_log), "-e", str(err_log)]
        return [*bsub, *self.flags, command]

    def check_available(self) -> None:
        _require("bsub", "LSFWorker")


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


# ------------------------------------------------------------------ helpers


def task_log_dir(context: Any, config_path: Path, task_name: str) -> Path:
    """The task's log directory (``<log dir>/<task name>``), where daisy
    writes each worker slot's log and cluster jobs write theirs."""
    logdir = context.get("logdir", "") if context is not None else ""
    # a saved config lives in <log dir>/<task name>-meta/
    base = Path(logdir) if logdir else config_path.parent.parent
    return base / task_name


def record_server(path: Path, context: Any) -> None:
    """Write where the daisy server of this run listens, for workers started
    by hand (``volara-cli blockwise-worker -c`` reads it)."""
    record = {"host": context["hostname"], "port": int(context["port"])}
    # written by several worker starts at once: replace, never half-write
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def wait_for_server(host: str, port: int, timeout: float) -> str:
    """Open (and close) one connection to the daisy server at ``host:port``,
    retrying for up to ``timeout`` seconds; return this end's address.

    Raises `ConnectionError` naming the address and the likely fix, so a
    worker that cannot reach the server fails in bounded time with a reason
    instead of waiting on the operating system's connect timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        attempt = min(5.0, max(deadline - time.monotonic(), 0.5))
        try:
            with socket.create_connection((host, port), attempt) as connection:
                return connection.getsockname()[0]
        except socket.gaierror as error:
            raise ConnectionError(
                f"cannot resolve {host!r}, the daisy server's host name given to "
                f"this worker ({error.strerror}); {_ADDRESS_FIX}"
            ) from None
        except ConnectionRefusedError:
            raise ServerGone(
                f"nothing listens at {host}:{port}: the run this worker was "
                f"started for has ended, or {host} is not the machine running the "
                f"pipeline; if the run is still going, {_ADDRESS_FIX}"
            ) from None
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"cannot reach the daisy server at {host}:{port} from "
                    f"{socket.gethostname()} within {timeout:g} s ({error}); "
                    f"{_ADDRESS_FIX}"
                ) from None
        time.sleep(1)


class ServerGone(ConnectionError):
    """Nothing listens at the daisy server's address."""


def server_listens(host: str, port: int) -> bool:
    """Whether the daisy server accepts connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


_ADDRESS_FIX = (
    "set the worker config's server_host (or DAISY_HOST where the pipeline "
    "runs) to an address of the pipeline's machine that workers can reach"
)


def _require(program: str, owner: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(
            f"{program} is not on PATH: {owner} starts workers with {program}. "
            "Run on a machine of the cluster (or put its tools on PATH), or drop "
            "worker_config to run locally."
        )
    return path


def _output(command: list[str], system: str) -> str:
    # ConnectionError: the cluster's controller cannot be reached from here
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise ConnectionError(f"{shlex.join(command)} did not answer in 30 s") from None
    if result.returncode != 0:
        raise ConnectionError(
            f"{system + ' does not answer: ' if system else ''}{shlex.join(command)} "
            f"failed: {result.stderr.strip()}"
        )
    return result.stdout


def _tail(path: Path, start: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(start)
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    last = text.strip().splitlines()[-lines:]
    return (":\n" + "\n".join(last)) if last else ""


def _stop_on_sigterm() -> None:
    # a run stopped with SIGTERM: as SystemExit it runs the cleanup that
    # cancels the worker's job instead of leaving it queued
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
