"""Workers forked from a process that has already imported volara.

daisy 2 starts every worker as a fresh ``python -m daisy._subprocess_worker``
(it cannot fork: its server runs threads). Unpickling a volara task there
imports volara's task modules and with them funlib.persistence, dask, xarray
and pandas: about 1.6 s per worker, paid by every worker of every task. On a
pipeline of short tasks that is most of the time (GraphMWS solves its graph in
a tenth of that).

So the driver starts one *host* per Python process: a fresh interpreter that
imports `volara.blockwise` once and then only forks. daisy still starts its
worker subprocesses; each runs a `PreforkedWorker`, which imports nothing but
the standard library, hands the host its environment, working directory and
its stdout/stderr file descriptors over a Unix socket, and waits. The host
forks a child that runs the real worker (the daisy client loop, the block
timeout watchdog, everything) with that environment, and reports how it ended;
the daisy worker ends the same way (same exit code, same signal), so daisy's
restarts, retries and timeouts see what they saw before.

- If the daisy worker dies, the host kills its child: nothing outlives it.
- If the driver dies, the host kills its children and exits.
- If the host cannot be reached, the worker runs the task itself, as
  without a host (slower, same result).
- The socket is in a directory only the user can open (the host runs code it
  is sent, like daisy's worker pipe).
- ``VOLARA_PREFORK=0`` turns the host off (workers start as plain daisy
  workers).
- The host starts with ``MALLOC_ARENA_MAX=2`` unless the environment sets it:
  zarr decodes chunks in threads, and glibc's default of one arena per thread
  let a worker's memory grow with the number of blocks it processed, not with
  the block (see benchmarks/README.md).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")
_STATUS = struct.Struct("<q")
_STANDARD_STREAMS = (0, 1, 2)
_PRELOAD = ("volara.blockwise",)
# extra modules for the host to import, comma separated (set by the driver)
_PRELOAD_VARIABLE = "VOLARA_PREFORK_PRELOAD"


# ------------------------------------------------------------ worker side


@dataclass(frozen=True)
class PreforkedWorker:
    """A daisy worker function (no arguments) that has the host fork the
    real worker. `payload` is the cloudpickled worker function."""

    address: str
    payload: bytes

    def __call__(self) -> None:
        try:
            connection = _connect(self.address)
        except OSError as error:
            print(
                f"volara: no prefork host at {self.address} ({error}); "
                "running the worker in this process",
                file=sys.stderr,
                flush=True,
            )
            _load(self.payload)()
            return
        with connection:
            _send_request(connection, self.payload)
            status = _receive_status(connection)
        _end_like(status)


def _connect(address: str) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
    except OSError:
        connection.close()
        raise
    return connection


def _send_request(connection: socket.socket, payload: bytes) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    request = pickle.dumps(
        {
            "payload": payload,
            "environ": dict(os.environ),
            "cwd": os.getcwd(),
            "sys_path": list(sys.path),
            "daisy_logging": _daisy_logging_settings(),
        }
    )
    socket.send_fds(connection, [_HEADER.pack(len(request))], list(_STANDARD_STREAMS))
    connection.sendall(request)


def _daisy_logging_settings() -> dict[str, Any]:
    # daisy restored its driver's logging settings in this process before
    # calling us; the forked worker needs the same
    from daisy import logging as daisy_logging

    basedir = daisy_logging.get_log_basedir()
    return {
        "basedir": None if basedir is None else str(basedir),
        "mode": daisy_logging.get_log_mode(),
        "level": daisy_logging.get_log_level(),
    }


def _receive_status(connection: socket.socket) -> int:
    data = _receive_exactly(connection, _STATUS.size)
    if data is None:
        # the host went away mid-run (the driver is ending): a dirty exit,
        # as if this worker had been killed
        return 1
    return int(_STATUS.unpack(data)[0])


def _end_like(status: int) -> None:
    """End this process as the forked worker ended: same exit code, or the
    same signal."""
    if status == 0:
        return
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            # a handler of ours must not catch it; SIGKILL and SIGSTOP
            # cannot be caught (and setting their handler raises)
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    raise SystemExit(status)


def _load(payload: bytes) -> Callable[[], None]:
    import cloudpickle

    return cloudpickle.loads(payload)


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------ driver side


@dataclass
class _Host:
    process: subprocess.Popen
    directory: Path

    @staticmethod
    def address_in(directory: Path) -> str:
        return str(directory / "host.sock")

    @property
    def address(self) -> str:
        return self.address_in(self.directory)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


_host: _Host | None = None
_host_owner_pid: int | None = None


def enabled() -> bool:
    """Whether workers are forked from the host: on Linux (the host waits on
    its children through pidfds) unless ``VOLARA_PREFORK`` is ``0``."""
    return hasattr(os, "pidfd_open") and os.environ.get("VOLARA_PREFORK", "1") != "0"


def preforked(worker_function: Callable[[], None]) -> Callable[[], None]:
    """``worker_function`` as daisy should run it: forked from this process's
    host (started now if needed), or unchanged if the host is turned off."""
    if not enabled():
        return worker_function
    address = started_host_address()
    if address is None:
        return worker_function
    import cloudpickle

    return PreforkedWorker(address=address, payload=cloudpickle.dumps(worker_function))


def started_host_address(preload: tuple[str, ...] = ()) -> str | None:
    """`host_address`, or None (with a warning) if the host cannot start
    here, e.g. because the temporary directory's path is too long for a Unix
    socket: workers then start as plain daisy workers."""
    try:
        return host_address(preload)
    except (OSError, RuntimeError) as error:
        logger.warning("workers start without the prefork host: %s", error)
        return None


def host_address(preload: tuple[str, ...] = ()) -> str:
    """The socket of this process's host, started on first use. Its imports
    (`volara.blockwise`, and the modules in ``preload`` that are installed,
    e.g. torch for `Predict`) run while the driver prepares the run; workers
    that connect earlier wait in the socket's backlog. A host already
    running keeps the modules it started with."""
    global _host, _host_owner_pid
    if _host is not None and _host_owner_pid == os.getpid():
        if _host.process.poll() is None:
            return _host.address
        _host.stop()
    directory = Path(tempfile.mkdtemp(prefix="volara-prefork-"))
    environ = dict(os.environ)
    environ.setdefault("MALLOC_ARENA_MAX", "2")
    environ[_PRELOAD_VARIABLE] = ",".join(preload)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volara.prefork",
            _Host.address_in(directory),
            *sys.path,
        ],
        stdin=subprocess.PIPE,
        env=environ,
    )
    host = _Host(process=process, directory=directory)
    if _host is None:
        atexit.register(_stop_host)
    _host, _host_owner_pid = host, os.getpid()
    _wait_for_socket(host)
    return host.address


def _wait_for_socket(host: _Host) -> None:
    # the host binds its socket before importing anything: this takes
    # milliseconds, and afterwards workers can connect at once
    import time

    deadline = time.monotonic() + 30
    while not os.path.exists(host.address):
        if host.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                "volara's prefork host did not start (exit code "
                f"{host.process.poll()}; its error is above); set VOLARA_PREFORK=0 "
                "to run workers without it"
            )
        time.sleep(0.005)


def _stop_host() -> None:
    if _host is not None and _host_owner_pid == os.getpid():
        _host.stop()


# -------------------------------------------------------------- host side


class _Server:
    """The host's loop: accept requests, fork a worker for each, report how
    each ended, and clean up when the driver goes."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, tuple[socket.socket, int]] = {}
        self.selector.register(listener, selectors.EVENT_READ, self._accept)
        self.selector.register(sys.stdin, selectors.EVENT_READ, self._driver_gone)
        self.running = True

    def serve(self) -> None:
        while self.running:
            for key, _ in self.selector.select():
                key.data(key.fileobj)

    def _accept(self, _: Any) -> None:
        connection, _address = self.listener.accept()
        try:
            request, streams = _read_request(connection)
        except (OSError, EOFError, pickle.UnpicklingError, struct.error):
            connection.close()
            return
        pid = os.fork()
        if pid == 0:
            self._become_worker(request, streams)
        for fd in streams:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (connection, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, lambda _: self._reap(pid))
        self.selector.register(
            connection, selectors.EVENT_READ, lambda _: self._caller_gone(pid)
        )

    def _become_worker(self, request: dict[str, Any], streams: list[int]) -> None:
        status = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.selector.close()
            self.listener.close()
            for connection, pidfd in self.children.values():
                connection.close()
                os.close(pidfd)
            for stream, fd in zip(_STANDARD_STREAMS, streams, strict=True):
                os.dup2(fd, stream)
                os.close(fd)
            _take_over(request)
            _load(request["payload"])()
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            _flush_standard_streams()
            os._exit(status)

    def _reap(self, pid: int) -> None:
        connection, pidfd = self.children.pop(pid)
        _, wait_status = os.waitpid(pid, 0)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        if connection in self.selector.get_map():
            self.selector.unregister(connection)
        try:
            connection.sendall(_STATUS.pack(os.waitstatus_to_exitcode(wait_status)))
        except OSError:
            pass
        connection.close()

    def _caller_gone(self, pid: int) -> None:
        # the daisy worker that asked for this child ended (killed, or its
        # driver is gone): the child must not go on alone
        connection, _ = self.children[pid]
        self.selector.unregister(connection)
        _kill(pid)

    def _driver_gone(self, _: Any) -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            self.running = False

    def _kill_children(self) -> None:
        for pid in list(self.children):
            connection, pidfd = self.children.pop(pid)
            _kill(pid)
            os.waitpid(pid, 0)
            connection.close()
            os.close(pidfd)


def _read_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, streams, _flags, _address = socket.recv_fds(
        connection, _HEADER.size, len(_STANDARD_STREAMS)
    )
    if len(header) != _HEADER.size or len(streams) != len(_STANDARD_STREAMS):
        for fd in streams:
            os.close(fd)
        raise EOFError("incomplete request")
    body = _receive_exactly(connection, _HEADER.unpack(header)[0])
    if body is None:
        for fd in streams:
            os.close(fd)
        raise EOFError("incomplete request")
    return pickle.loads(body), streams


def _take_over(request: dict[str, Any]) -> None:
    """Make this forked child look like the daisy worker that asked for it."""
    os.environ.clear()
    os.environ.update(request["environ"])
    os.chdir(request["cwd"])
    for entry in reversed(request["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from daisy import logging as daisy_logging

    settings = request["daisy_logging"]
    if settings["basedir"] is not None:
        daisy_logging.set_log_basedir(settings["basedir"])
    if settings["mode"]:
        daisy_logging.set_log_mode(settings["mode"])
    if settings["level"] is not None:
        daisy_logging.set_log_level(settings["level"])
    _reseed_random_generators()


def _reseed_random_generators() -> None:
    # forked children would otherwise all draw the host's random sequence
    import random

    import numpy as np

    random.seed()
    np.random.seed()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _serve(address: str, driver_sys_path: list[str]) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bound and listening under another name first, so that a worker never
    # finds a socket that refuses connections
    listener.bind(address + ".new")
    listener.listen(128)
    os.rename(address + ".new", address)
    for entry in reversed(driver_sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # SIGTERM ends the host like its driver's end does: children first
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import importlib

    for module in _PRELOAD:
        importlib.import_module(module)
    for entry in filter(None, os.environ.pop(_PRELOAD_VARIABLE, "").split(",")):
        module, _, function = entry.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception:
            pass  # the worker that needs it does it again, and reports it
    server = _Server(listener)
    try:
        server.serve()
    finally:
        server._kill_children()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:])
