"""Fixtures of the cluster tests: a single-node SLURM cluster on this machine,
a private network namespace, and running a pipeline config the way a user
does (``volara-cli run``), bounded by a timeout.

The SLURM cluster is started by ``.ci/start-slurm.sh`` (installs slurm-wlm and
munge, writes slurm.conf, starts the daemons) if it is not running already.
Where that is impossible (not root, no packages to be had) the tests that
need it skip with the reason; ``VOLARA_TEST_SKIP_SLURM=1`` skips them
outright.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from volara.blockwise.registry import dump_config

REPO = Path(__file__).resolve().parents[2]
START_SLURM = REPO / ".ci" / "start-slurm.sh"
VOLARA_CLI = Path(sys.executable).parent / "volara-cli"
START_SLURM_TIMEOUT = 600
POLL_SECONDS = 0.25


# ------------------------------------------------------------------- SLURM


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The default partition of a SLURM cluster that runs jobs on this
    machine, started if need be."""
    partition, problem = _start_slurm()
    if partition is None:
        pytest.skip(f"no SLURM cluster: {problem}")
    return partition


def _ready_partition() -> str | None:
    """The default partition if a node of it is ready for jobs."""
    if shutil.which("sinfo") is None:
        return None
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%P %t"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return None
    for line in result.stdout.splitlines():
        name, _, state = line.partition(" ")
        if name.endswith("*") and state.strip() in ("idle", "mix", "alloc"):
            return name.rstrip("*")
    return None


def _start_slurm() -> tuple[str | None, str]:
    if os.environ.get("VOLARA_TEST_SKIP_SLURM"):
        return None, "VOLARA_TEST_SKIP_SLURM is set"
    partition = _ready_partition()
    if partition is not None:
        return partition, ""
    if os.geteuid() != 0:
        return None, (
            "none answers on this machine, and starting one needs root: run "
            "`sudo bash .ci/start-slurm.sh`"
        )
    try:
        result = subprocess.run(
            ["bash", str(START_SLURM)],
            capture_output=True,
            text=True,
            timeout=START_SLURM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None, f"{START_SLURM} did not finish in {START_SLURM_TIMEOUT} s"
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-5:])
        return None, f"{START_SLURM} failed: {tail}"
    partition = _ready_partition()
    if partition is None:
        return None, f"{START_SLURM} succeeded, but sinfo shows no ready partition"
    return partition, ""


@dataclass
class Job:
    job_id: str
    name: str
    states: set[str] = field(default_factory=set)
    stderr: str = ""

    def stderr_text(self) -> str:
        """What the job has written to its stderr file so far: nothing while
        the file does not exist. squeue reports a job RUNNING before its
        batch script starts and SLURM creates the file, so a missing file
        means "not reached yet", not an error."""
        if not self.stderr:
            return ""
        try:
            return Path(self.stderr).read_text()
        except FileNotFoundError:
            return ""


FINAL_JOB_STATES = (
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
)


def cancel_job(job_id: str, timeout: float = 30) -> str:
    """``scancel`` the job and return the state it ended in. scancel also
    succeeds, silently, on a job that has finished in the meantime (squeue
    can show it RUNNING a moment before): its state then is COMPLETED, not
    CANCELLED, and the caller must not count it as cancelled."""
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        state = next(
            (f.split("=", 1)[1] for f in shown.split() if f.startswith("JobState=")),
            "UNKNOWN",
        )
        if state in FINAL_JOB_STATES or time.monotonic() > deadline:
            return state
        time.sleep(POLL_SECONDS)


class SqueueWatcher(threading.Thread):
    """Records the SLURM jobs named after ``names`` while a run goes on, and
    hands every sighting to ``on_sighting`` (which may act on the job)."""

    def __init__(
        self, names: list[str], on_sighting: Callable[[Job], None] | None = None
    ):
        super().__init__(daemon=True)
        self.names = set(names)
        self.on_sighting = on_sighting
        self.jobs: dict[str, Job] = {}
        self.problems: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._poll()
            except Exception as error:  # reported by the test, not swallowed
                self.problems.append(repr(error))
                return
            time.sleep(POLL_SECONDS)

    def _poll(self) -> None:
        listing = subprocess.run(
            ["squeue", "--noheader", "--Format=JobID:|,Name:|,State:|,STDERR:"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        for line in listing.splitlines():
            job_id, name, state, stderr = (part.strip() for part in line.split("|")[:4])
            if name not in self.names:
                continue
            job = self.jobs.setdefault(job_id, Job(job_id, name, stderr=stderr))
            job.states.add(state)
            if self.on_sighting is not None:
                self.on_sighting(job)

    def names_seen(self) -> set[str]:
        return {job.name for job in self.jobs.values()}

    def __enter__(self) -> SqueueWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop_event.set()
        self.join(timeout=60)


def run_pipeline_config(
    config: dict, workdir: Path, timeout: float, job_names: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """Run a pipeline config with ``volara-cli run`` in ``workdir`` (logs in
    ``workdir/logs``). A run that takes longer than ``timeout`` seconds is
    killed, its jobs cancelled, and the test failed."""
    path = workdir / "pipeline.json"
    dump_config(config, path)
    command = [str(VOLARA_CLI), "run", str(path), "--log-dir", str(workdir / "logs")]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        for name in job_names:
            subprocess.run(["scancel", f"--name={name}"], check=False, timeout=30)
        pytest.fail(
            f"volara-cli run did not finish in {timeout} s; last output:\n"
            + "\n".join(stderr.splitlines()[-30:])
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# ------------------------------------------------------- network namespaces


@dataclass(frozen=True)
class PrivateLink:
    """A network namespace joined to this one by a veth pair, and nothing
    else: ``host_address`` is this namespace's end, ``worker_address`` the
    other namespace's, ``unused_address`` is on the link but nowhere."""

    namespace: str
    host_address: str
    worker_address: str
    unused_address: str

    def launcher(self) -> list[str]:
        """A `LocalWorker.launcher` starting workers in the namespace."""
        return ["ip", "netns", "exec", self.namespace]


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *args]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def private_link() -> Iterator[PrivateLink]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = uuid.uuid4().hex[:8]
    namespace = f"volara-test-{tag}"
    host_end, worker_end = f"vh{tag}", f"vw{tag}"
    # a /29 somewhere in 10.0.0.0/8, unlikely to meet a real network
    number = int(tag, 16)
    subnet = f"10.{200 + number % 50}.{(number >> 8) % 256}"
    link = PrivateLink(namespace, f"{subnet}.1", f"{subnet}.2", f"{subnet}.3")
    try:
        _ip("netns", "add", namespace)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create a network namespace: {error.stderr.strip()}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", worker_end)
        _ip("link", "set", worker_end, "netns", namespace)
        _ip("addr", "add", f"{link.host_address}/29", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip(
            "addr",
            "add",
            f"{link.worker_address}/29",
            "dev",
            worker_end,
            namespace=namespace,
        )
        _ip("link", "set", worker_end, "up", namespace=namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        yield link
    finally:
        _remove_namespace(namespace, host_end)


def _remove_namespace(namespace: str, host_end: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    # deleting the namespace deletes its end of the pair, and with it ours
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", host_end], capture_output=True)
