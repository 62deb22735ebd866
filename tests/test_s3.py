"""Datasets, look-up tables and the segmentation pipeline on S3, against a
real S3 server (SeaweedFS, the `seaweedfs` fixture); no mocks."""

from __future__ import annotations

import json
import socket
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from conftest import S3Server, write_array
from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel, Threshold
from volara.datasets import (
    LSD,
    Affs,
    AnyDataset,
    CloudVolumeWrapper,
    Dataset,
    Labels,
    Raw,
    chunk_cache_for,
    read_region,
    write_region,
)
from volara.dbs import SQLite
from volara.logging import set_log_basedir
from volara.lut import LUT
from volara.sample_data import generate_sample_data

# the zarr dataset types; CloudVolume datasets are read-only and do not take
# s3_kwargs (tests/test_cloudvolume.py)
DATASET_TYPES = [
    cls
    for cls in typing.get_args(typing.get_args(AnyDataset)[0])
    if cls is not CloudVolumeWrapper
]
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def _no_local_url_folders(root: Path) -> None:
    """Nothing under ``root`` is named like a folded url (``s3:``)."""
    stray = [p for p in root.rglob("*") if p.name.endswith(":")]
    assert stray == [], stray


def _objects(server: S3Server, url: str) -> list[str]:
    """The objects stored under ``url`` (SeaweedFS lists an emptied folder
    as a directory for a while: not an object)."""
    found = server.filesystem().find(url.split("://", 1)[1], detail=True)
    return sorted(name for name, info in found.items() if info["type"] == "file")


def _dataset(cls: type[Dataset], url: str, server: S3Server) -> Dataset:
    extra = {"neighborhood": NEIGHBORHOOD} if cls is Affs else {}
    return cls(store=url, s3_kwargs=server.s3_kwargs, **extra)


def _prepare(dataset: Dataset, channels: tuple[int, ...], dtype) -> None:
    dataset.prepare(
        shape=(*channels, 8, 12, 12),
        chunk_shape=(*channels, 4, 4, 4),
        offset=(8, 4, 4),
        voxel_size=(2, 1, 1),
        units=["nm"] * 3,
        axis_names=[*(f"c{i}^" for i in range(len(channels))), "z", "y", "x"],
        types=[*(["channel"] * len(channels)), "space", "space", "space"],
        dtype=dtype,
    )


@pytest.mark.parametrize("cls", DATASET_TYPES, ids=lambda c: c.__name__)
def test_every_dataset_type_round_trips_on_s3(seaweedfs, tmp_path, cls):
    url = seaweedfs.url("data.zarr", cls.__name__.lower())
    dataset = _dataset(cls, url, seaweedfs)
    assert dataset.is_remote and dataset.store == url
    assert dataset.name == cls.__name__.lower()
    assert not dataset.exists()
    channels = (3,) if cls in (Affs, LSD) else ()
    dtype = np.float32 if cls in (Affs, LSD, Raw) else np.uint64
    _prepare(dataset, channels, dtype)
    assert dataset.exists()
    assert "zarr.json" in {name.rsplit("/", 1)[-1] for name in _objects(seaweedfs, url)}

    data = np.arange(np.prod((*channels, 8, 12, 12))).reshape(*channels, 8, 12, 12)
    array = dataset.array("r+")
    array[array.roi] = data.astype(dtype)
    block = Roi((12, 6, 6), (4, 4, 4))  # world units: voxels 2:4, 2:6, 2:6
    write_region(array, block, np.full((*channels, 2, 4, 4), 7, dtype=dtype))
    expected = data.astype(dtype)
    expected[..., 2:4, 2:6, 2:6] = 7

    # read back through a new model from JSON: the url and options survive
    again = type(dataset).model_validate_json(dataset.model_dump_json())
    assert again.store == url and again.s3_kwargs == seaweedfs.s3_kwargs
    reread = again.array("r")
    assert reread.roi == Roi((8, 4, 4), (16, 12, 12))
    assert reread.voxel_size == Coordinate(2, 1, 1)
    np.testing.assert_array_equal(reread[reread.roi], expected)
    np.testing.assert_array_equal(
        read_region(reread, block), expected[..., 2:4, 2:6, 2:6]
    )
    for key, value in dataset.attrs.items():
        stored = dict(again.zarr_array("r").attrs)[key]
        assert stored == (NEIGHBORHOOD if cls is Affs else value)

    # a compatible prepare keeps the data; an incompatible one is refused
    _prepare(dataset, channels, dtype)
    np.testing.assert_array_equal(dataset.array("r")[reread.roi], expected)
    with pytest.raises(ValueError, match="dtype: given int8"):
        _prepare(dataset, channels, np.int8)

    dataset.drop()
    assert not dataset.exists()
    assert _objects(seaweedfs, url) == []
    dataset.drop()  # twice is fine
    _no_local_url_folders(tmp_path)


def test_affs_reads_its_neighborhood_from_s3(seaweedfs):
    url = seaweedfs.url("a.zarr", "affs")
    _prepare(_dataset(Affs, url, seaweedfs), (3,), np.float32)
    affs = Affs(store=url, s3_kwargs=seaweedfs.s3_kwargs)
    assert [tuple(o) for o in affs.neighborhood or []] == [
        tuple(o) for o in NEIGHBORHOOD
    ]


def test_s3_inputs_are_read_as_zarr_reads_them_not_kept(seaweedfs):
    """Decoded chunks are kept for local inputs only: the cache would fetch
    a remote input's chunks one request after the other."""
    url = seaweedfs.url("kept.zarr", "labels")
    labels = _dataset(Labels, url, seaweedfs)
    _prepare(labels, (), np.uint64)
    assert chunk_cache_for(labels.array("r")) is None


def test_boto3_option_names_reach_the_server(seaweedfs):
    # volara 1 configs may carry boto3's names; s3fs calls them key/secret
    options = {
        "aws_access_key_id": seaweedfs.s3_kwargs["key"],
        "aws_secret_access_key": seaweedfs.s3_kwargs["secret"],
        "region_name": "us-east-1",
        "endpoint_url": seaweedfs.endpoint,
    }
    labels = Labels(store=seaweedfs.url("b.zarr", "labels"), s3_kwargs=options)
    _prepare(labels, (), np.uint8)
    assert labels.exists() and labels.array("r").shape == (8, 12, 12)


def test_a_folded_url_is_refused_not_written_locally(tmp_path):
    with pytest.raises(ValueError, match="looks like a url whose '//' was folded"):
        Labels(store=Path("s3://bucket/data.zarr/labels"))
    with pytest.raises(ValueError, match="looks like a url whose '//' was folded"):
        LUT(path=Path("s3://bucket/lut.npz"))
    _no_local_url_folders(tmp_path)


def test_missing_s3fs_is_a_clear_error(monkeypatch):
    # None in sys.modules makes `import s3fs` fail as if it were not installed
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ImportError, match=r'pip install "volara\[s3\]"'):
        Labels(store="s3://bucket/data.zarr/labels").exists()
    with pytest.raises(ImportError, match=r'pip install "volara\[s3\]"'):
        LUT(path="s3://bucket/lut").save(np.zeros((2, 0)))


# ------------------------------------------------------------------- LUT


def test_lut_saves_and_loads_on_s3_without_a_local_file(seaweedfs, tmp_path):
    url = seaweedfs.url("run", "lut")
    lut = LUT(path=url, s3_kwargs=seaweedfs.s3_kwargs)
    assert lut.is_s3 and lut.uri == f"{url}.npz" and lut.location == lut.uri
    assert not lut.exists() and lut.load() is None
    table = np.array([[1, 2, 3], [5, 5, 9]], dtype=np.uint64)
    lut.save(table)
    assert _objects(seaweedfs, lut.uri) == [lut.uri.split("://", 1)[1]]
    again = LUT.model_validate_json(lut.model_dump_json())
    assert again.exists()
    np.testing.assert_array_equal(again.load(), table)
    _no_local_url_folders(tmp_path)
    assert not any(p.suffix == ".npz" for p in tmp_path.rglob("*"))
    lut.drop()
    assert not lut.exists() and _objects(seaweedfs, lut.uri) == []


@pytest.mark.parametrize(
    "url, error, message",
    [
        ("nosuchprotocol://bucket/lut", ValueError, "not a storage protocol"),
        ("http://127.0.0.1:9/lut", OSError, "cannot write the look-up table"),
    ],
)
def test_lut_at_a_url_volara_cannot_write_is_a_clear_error(
    tmp_path, url, error, message
):
    with pytest.raises(error, match=message):
        LUT(path=url).save(np.array([[1], [1]]))
    _no_local_url_folders(tmp_path)
    assert not any(p.suffix == ".npz" for p in tmp_path.rglob("*"))


# ------------------------------------------------------ bad endpoint, keys


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _threshold_into(tmp_path: Path, mask: Labels) -> Threshold:
    write_array(tmp_path / "in.zarr" / "raw", np.ones((8, 8, 8), dtype=np.float32))
    raw = Raw(store=tmp_path / "in.zarr" / "raw")
    return Threshold(in_data=raw, mask=mask, threshold=0.5, block_size=(4, 4, 4))


def _bad_options(server: S3Server, which: str) -> dict:
    if which == "endpoint":
        return {
            **server.s3_kwargs,
            "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
        }
    if which == "key":
        return {**server.s3_kwargs, "key": "nobody"}
    return {**server.s3_kwargs, "secret": "wrong-secret"}


@pytest.mark.parametrize(
    "which, error, message",
    [
        ("endpoint", ConnectionError, "cannot reach the S3 server at http://127"),
        ("key", PermissionError, "refused access"),
        ("secret", PermissionError, "refused access"),
    ],
)
def test_bad_endpoint_or_credentials_fail_before_any_block(
    seaweedfs, tmp_path, which, error, message
):
    url = seaweedfs.url("out.zarr", "mask")
    mask = Labels(store=url, s3_kwargs=_bad_options(seaweedfs, which))
    # a pipeline whose first task is fine: nothing of it may run either
    first = _threshold_into(tmp_path, Labels(store=tmp_path / "local.zarr" / "m"))
    second = _threshold_into(tmp_path, mask)
    start = time.monotonic()
    with pytest.raises(error, match=message) as raised:
        (first + second).run_blockwise(progress=False)
    assert time.monotonic() - start < 30
    assert "Threshold.mask: " in str(raised.value) and url in str(raised.value)
    assert not (tmp_path / "local.zarr").exists()
    assert not any((tmp_path / "volara_logs").glob("*-meta"))
    assert _objects(seaweedfs, url) == []


def test_a_missing_bucket_is_named_before_any_block(seaweedfs, tmp_path):
    url = f"s3://no-such-bucket/{seaweedfs.url('out.zarr', 'mask')[5:]}"
    task = _threshold_into(tmp_path, Labels(store=url, s3_kwargs=seaweedfs.s3_kwargs))
    with pytest.raises(FileNotFoundError, match="has no bucket 'no-such-bucket'"):
        task.run_blockwise(progress=False)
    assert not any((tmp_path / "volara_logs").glob("*-meta"))


def test_bad_credentials_for_a_lut_name_the_field(seaweedfs, tmp_path):
    lut = LUT(path=seaweedfs.url("lut"), s3_kwargs=_bad_options(seaweedfs, "secret"))
    with pytest.raises(PermissionError, match="LUT.path: the S3 server"):
        lut.save(np.array([[1], [1]]))


# ---------------------------------------------------------------- pipeline

SHAPE = (20, 96, 96)
BLOCKS = Coordinate(10, 48, 48)
CONTEXT = Coordinate(5, 24, 24)


def _segmentation_pipeline(
    affs: Affs, fragments: Labels, segments: Labels, lut: LUT, db: SQLite
):
    """The README's pipeline, two workers per blockwise task."""
    neighborhood = affs.neighborhood or []
    short, long = neighborhood[:3], neighborhood[3:]
    shared: dict = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=BLOCKS,
        context=CONTEXT,
        num_workers=2,
    )
    bias = [-0.4] * len(short) + [-0.7] * len(long)
    return (
        ExtractFrags(bias=bias, **shared)
        + AffAgglom(scores={"adj_weight": short, "lr_weight": long}, **shared)
        + GraphMWS(
            db=db,
            lut=lut,
            roi=affs.array("r").roi,
            weights={"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)},
        )
        + Relabel(
            frags_data=fragments,
            seg_data=segments,
            lut=lut,
            block_size=BLOCKS,
            num_workers=2,
        )
    )


def _graph_db(path: Path) -> SQLite:
    return SQLite(path=path, edge_attrs={"adj_weight": "float", "lr_weight": "float"})


def _copy_affinities_to_s3(server: S3Server, local_affs: Affs) -> tuple[str, dict]:
    """Copy ``local_affs`` to ``<container>/affinities`` on ``server``;
    returns the container's url and the options to reach it."""
    container = server.url("sample.zarr")
    options = server.s3_kwargs
    source = local_affs.array("r")
    write_array(
        f"{container}/affinities",
        source[source.roi],
        voxel_size=source.voxel_size,
        offset=source.offset,
        chunk_shape=source._source_data.chunks,
        attrs={"neighborhood": [list(o) for o in local_affs.neighborhood or []]},
        storage_options=options,
    )
    return container, options


@pytest.mark.slow
def test_pipeline_on_s3_equals_the_local_run(seaweedfs, tmp_path):
    generate_sample_data(tmp_path / "sample.zarr", shape=SHAPE, num_cells=20, seed=3)
    local_affs = Affs(store=tmp_path / "sample.zarr" / "affinities")

    local = {
        "fragments": Labels(store=tmp_path / "sample.zarr" / "fragments"),
        "segments": Labels(store=tmp_path / "sample.zarr" / "segments"),
        "lut": LUT(path=tmp_path / "lut.npz"),
    }
    # block tracking of each run in its own directory: the tasks have the
    # same names in both
    set_log_basedir(tmp_path / "local_logs")
    local_states = _segmentation_pipeline(
        local_affs,
        local["fragments"],
        local["segments"],
        local["lut"],
        _graph_db(tmp_path / "local.sqlite"),
    ).run_blockwise(progress=False)

    # the affinities copied to S3, everything the pipeline writes there too
    # (the graph stays in a local SQLite file)
    container, options = _copy_affinities_to_s3(seaweedfs, local_affs)
    remote_affs = Affs(store=f"{container}/affinities", s3_kwargs=options)
    assert remote_affs.neighborhood == local_affs.neighborhood
    remote = {
        "fragments": Labels(store=f"{container}/fragments", s3_kwargs=options),
        "segments": Labels(store=f"{container}/segments", s3_kwargs=options),
        "lut": LUT(path=f"{container}/lut", s3_kwargs=options),
    }
    set_log_basedir(tmp_path / "s3_logs")
    states = _segmentation_pipeline(
        remote_affs,
        remote["fragments"],
        remote["segments"],
        remote["lut"],
        _graph_db(tmp_path / "remote.sqlite"),
    ).run_blockwise(progress=False)

    for name, state in [*local_states.items(), *states.items()]:
        assert state.failed_count == 0, name
        assert state.completed_count == state.total_block_count, name
    assert [s.completed_count for s in states.values()] == [
        s.completed_count for s in local_states.values()
    ]
    for what in ("fragments", "segments"):
        here, there = local[what].array("r"), remote[what].array("r")
        assert there.roi == here.roi
        np.testing.assert_array_equal(there[there.roi], here[here.roi])
    np.testing.assert_array_equal(remote["lut"].load(), local["lut"].load())
    assert len(np.unique(remote["segments"].array("r")[:])) > 10
    # block tracking stays local, keyed by the urls the tasks write
    layout = tmp_path / "s3_logs" / "segments-relabel-meta" / "layout.json"
    assert json.loads(layout.read_text())["outputs"] == [f"{container}/segments"]
    _no_local_url_folders(tmp_path)
