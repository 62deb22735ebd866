"""Shared fixtures: every test runs in its own directory with its own volara
log directory, so block tracking never leaks from one test to another."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            # the name is generated below from a uuid: a safe identifier
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        conn.close()


@pytest.fixture
def postgres() -> Iterator[PostgreSQL]:
    """A PostgreSQL config naming a fresh database, dropped afterwards."""
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
):
    """Write ``data`` as a zarr array with funlib metadata (channel axes first)."""
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
    )
    array[:] = data
    if attrs:
        array._source_data.attrs.update(attrs)
    return array
