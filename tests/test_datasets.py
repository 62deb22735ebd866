"""Dataset configs: JSON/YAML round trips, lazy reading ops, Affs
neighborhoods, and `prepare`'s reuse-or-refuse of existing arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from funlib.geometry import Coordinate, Roi
from pydantic import TypeAdapter

from conftest import write_array
from volara.datasets import LSD, Affs, AnyDataset, Dataset, Labels, Raw

ANY_DATASET: TypeAdapter = TypeAdapter(AnyDataset)


def example_datasets(tmp_path) -> list[Dataset]:
    return [
        Raw(
            store=tmp_path / "a.zarr" / "raw",
            voxel_size=[4, 4, 4],
            offset=[0, 8, 16],
            axis_names=["c^", "z", "y", "x"],
            units=["nm", "nm", "nm"],
            channels=[2, 0],
            scale_shift=(1 / 255, -0.5),
            ome_norm=tmp_path / "a.zarr",
            stack=Raw(store="b.zarr/raw", stack=Labels(store="c.zarr/mask")),
        ),
        Affs(store="a.zarr/affs", neighborhood=[[1, 0, 0], [0, 1, 0], [0, 0, 4]]),
        Labels(store="a.zarr/frags", voxel_size=Coordinate(2, 2, 2)),
        LSD(store=str(tmp_path / "lsds")),
    ]


def test_every_dataset_round_trips_through_json_and_yaml(tmp_path):
    for dataset in example_datasets(tmp_path):
        from_json = ANY_DATASET.validate_json(dataset.model_dump_json())
        assert type(from_json) is type(dataset)
        assert from_json == dataset
        assert type(dataset).model_validate_json(dataset.model_dump_json()) == dataset
        text = yaml.safe_dump(dataset.model_dump(mode="json"))
        from_yaml = ANY_DATASET.validate_python(yaml.safe_load(text))
        assert type(from_yaml) is type(dataset)
        assert from_yaml == dataset


def test_nested_stack_keeps_its_class(tmp_path):
    raw = example_datasets(tmp_path)[0]
    loaded = ANY_DATASET.validate_json(raw.model_dump_json())
    assert isinstance(loaded.stack, Raw)
    assert isinstance(loaded.stack.stack, Labels)


def test_dataset_types_are_unique():
    tags = [
        cls.model_fields["dataset_type"].default for cls in (Raw, Affs, Labels, LSD)
    ]
    assert sorted(tags) == sorted(set(tags)) == ["affs", "labels", "lsd", "raw"]


def test_name_is_last_path_component():
    assert Labels(store="data/x.zarr/fragments/").name == "fragments"


def test_raw_channels_are_selected_in_the_given_order(tmp_path):
    data = np.stack([np.full((2, 3, 4), c, dtype=np.uint8) for c in range(3)])
    write_array(tmp_path / "d.zarr/raw", data)
    array = Raw(store=tmp_path / "d.zarr/raw", channels=[2, 0]).array()
    values = array.to_ndarray(array.roi)
    assert values.shape == (2, 2, 3, 4)
    assert (values[0] == 2).all() and (values[1] == 0).all()


def test_raw_scale_shift(tmp_path):
    data = np.array([[[0, 51, 255]]], dtype=np.uint8)
    write_array(tmp_path / "raw", data)
    array = Raw(store=tmp_path / "raw", scale_shift=(1 / 255, 1.0)).array()
    values = array.to_ndarray(array.roi)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, [[[1.0, 1.2, 2.0]]], rtol=1e-6)


def test_raw_ome_norm_uses_each_channels_window(tmp_path):
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    group.attrs["omero"] = {
        "channels": [
            {"window": {"min": 10, "max": 20}},
            {"window": {"min": 0, "max": 100}},
        ]
    }
    data = np.stack(
        [np.full((1, 2, 2), 15, np.uint16), np.full((1, 2, 2), 25, np.uint16)]
    )
    write_array(tmp_path / "img.zarr/s0", data)
    raw = Raw(store=tmp_path / "img.zarr/s0", ome_norm=tmp_path / "img.zarr")
    assert raw.bounds == [(10.0, 20.0), (0.0, 100.0)]
    array = raw.array()
    values = array.to_ndarray(array.roi)
    np.testing.assert_allclose(values[0], 0.5)
    np.testing.assert_allclose(values[1], 0.25)
    # with a channel selection the windows follow the selected channels
    second = Raw(
        store=tmp_path / "img.zarr/s0", ome_norm=tmp_path / "img.zarr", channels=[1]
    )
    array = second.array()
    np.testing.assert_allclose(array.to_ndarray(array.roi), 0.25)


def test_raw_ome_norm_without_metadata_is_an_error(tmp_path):
    zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    write_array(tmp_path / "img.zarr/s0", np.zeros((1, 2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="ome_norm"):
        Raw(store=tmp_path / "img.zarr/s0", ome_norm=tmp_path / "img.zarr").array()


def test_raw_stack_appends_channels(tmp_path):
    first = np.stack(
        [np.full((2, 2, 2), 1, np.float32), np.full((2, 2, 2), 2, np.float32)]
    )
    second = np.full((2, 2, 2), 30, np.uint8)
    write_array(tmp_path / "d.zarr/first", first)
    write_array(tmp_path / "d.zarr/second", second)
    raw = Raw(
        store=tmp_path / "d.zarr/first",
        channels=[1],
        stack=Raw(store=tmp_path / "d.zarr/second", scale_shift=(0.1, 0)),
    )
    array = raw.array()
    values = array.to_ndarray(array.roi)
    assert values.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(values[0], 2)
    np.testing.assert_allclose(values[1], 3, rtol=1e-6)


def test_missing_array_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no zarr array at .*nothing.zarr"):
        Labels(store=tmp_path / "nothing.zarr").array()


def test_affs_neighborhood_is_read_from_the_array(tmp_path):
    write_array(
        tmp_path / "affs",
        np.zeros((2, 4, 4, 4), np.float32),
        attrs={"neighborhood": [[1, 0, 0], [0, 0, 3]]},
    )
    affs = Affs(store=tmp_path / "affs")
    assert affs.neighborhood == [Coordinate(1, 0, 0), Coordinate(0, 0, 3)]
    # agreeing with the stored value is fine, disagreeing is not
    Affs(store=tmp_path / "affs", neighborhood=[[1, 0, 0], [0, 0, 3]])
    with pytest.raises(ValueError, match="stores"):
        Affs(store=tmp_path / "affs", neighborhood=[[1, 0, 0], [0, 1, 0]])


def test_affs_without_any_neighborhood_is_a_clear_error(tmp_path):
    write_array(tmp_path / "affs", np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Affs.neighborhood: not given"):
        Affs(store=tmp_path / "affs")
    with pytest.raises(ValueError, match="Affs.neighborhood: not given"):
        Affs(store=tmp_path / "missing")


def test_affs_neighborhood_is_written_on_prepare(tmp_path):
    affs = Affs(store=tmp_path / "affs", neighborhood=[[1, 0, 0], [0, 2, 0]])
    affs.prepare(
        shape=(2, 4, 4, 4),
        chunk_shape=(2, 2, 2, 2),
        offset=(0, 0, 0),
        voxel_size=(1, 1, 1),
        units=None,
        axis_names=None,
        types=None,
        dtype=np.float32,
    )
    assert zarr.open(str(tmp_path / "affs")).attrs["neighborhood"] == [
        [1, 0, 0],
        [0, 2, 0],
    ]
    assert Affs(store=tmp_path / "affs").neighborhood == affs.neighborhood


def _prepare(
    dataset: Dataset,
    shape=(4, 6, 8),
    chunk_shape=(2, 3, 4),
    voxel_size=(2, 1, 1),
    dtype=np.uint64,
):
    dataset.prepare(
        shape=shape,
        chunk_shape=chunk_shape,
        offset=(10, 0, 0),
        voxel_size=voxel_size,
        units=["nm", "nm", "nm"],
        axis_names=["z", "y", "x"],
        types=None,
        dtype=dtype,
    )


def test_prepare_reuses_a_compatible_array(tmp_path):
    labels = Labels(store=tmp_path / "out.zarr/labels")
    _prepare(labels)
    array = labels.array("r+")
    assert array.roi == Roi((10, 0, 0), (8, 6, 8))
    assert array.voxel_size == Coordinate(2, 1, 1)
    array[array.roi] = np.full((4, 6, 8), 7, np.uint64)
    _prepare(labels)
    again = labels.array()
    assert (again.to_ndarray(again.roi) == 7).all(), "prepare must not overwrite data"


def test_prepare_refuses_an_incompatible_array_listing_given_and_found(tmp_path):
    labels = Labels(store=tmp_path / "out.zarr/labels")
    _prepare(labels)
    with pytest.raises(ValueError) as error:
        _prepare(labels, shape=(4, 6, 9), voxel_size=(1, 1, 1), dtype=np.uint8)
    message = str(error.value)
    assert "shape (voxels): given (4, 6, 9), found (4, 6, 8)" in message
    assert "voxel size (world units): given (1, 1, 1), found (2, 1, 1)" in message
    assert "dtype: given uint8, found uint64" in message
    assert "chunk shape" not in message
    # the refused call left the array untouched
    assert labels.array().shape == (4, 6, 8)


def test_drop_deletes_the_array(tmp_path):
    labels = Labels(store=tmp_path / "out.zarr/labels")
    _prepare(labels)
    assert labels.exists()
    labels.drop()
    assert not labels.exists()
    labels.drop()  # dropping twice is fine


def test_a_volara1_dataset_config_loads_and_writable_false_protects_it(tmp_path):
    from volara.blockwise import Threshold

    write_array(tmp_path / "d.zarr" / "raw", np.ones((4, 4, 4), dtype=np.float32))
    # the keys volara 1.0.5 writes into every dataset of a dumped config
    raw = Raw.model_validate(
        {
            "dataset_type": "raw",
            "store": str(tmp_path / "d.zarr" / "raw"),
            "writable": False,
            "zarr_kwargs": {},
            "s3_kwargs": None,
        }
    )
    assert raw.array("r").shape == (4, 4, 4)
    with pytest.raises(PermissionError, match="Raw.writable is False"):
        raw.array("r+")
    protected = Labels(store=tmp_path / "d.zarr" / "mask", writable=False)
    task = Threshold(in_data=raw, mask=protected, threshold=0.5, block_size=(2, 2, 2))
    with pytest.raises(PermissionError, match="Labels.writable is False"):
        task.run_blockwise(multiprocessing=False)
    assert not (tmp_path / "d.zarr" / "mask").exists()
    # s3_kwargs load (tests/test_s3.py uses them); a local store ignores them
    local = Raw(store="x.zarr", s3_kwargs={"endpoint_url": "http://e"})
    assert local.store == Path("x.zarr") and not local.is_remote


def test_block_reads_and_writes_leave_zarrs_settings_as_they_were(tmp_path):
    """Local block reads and writes decode one chunk at a time, and then put
    zarr's concurrency back: the rest of the process keeps its own."""
    from volara.datasets import read_region, write_region

    data = np.arange(8 * 12 * 12, dtype=np.uint64).reshape(8, 12, 12)
    write_array(tmp_path / "a.zarr", data, chunk_shape=(4, 4, 4))
    array = Labels(store=tmp_path / "a.zarr").array("r+")
    before = zarr.config.get("async.concurrency")
    inside = Roi((2, 3, 3), (4, 6, 6))
    np.testing.assert_array_equal(read_region(array, inside), data[2:6, 3:9, 3:9])
    past_the_edge = Roi((6, 9, 9), (4, 6, 6))
    expected = np.zeros((4, 6, 6), dtype=np.uint64)
    expected[:2, :3, :3] = data[6:, 9:, 9:]
    np.testing.assert_array_equal(read_region(array, past_the_edge), expected)
    write_region(array, inside, np.full((4, 6, 6), 7, dtype=np.uint64))
    assert (np.asarray(zarr.open_array(tmp_path / "a.zarr")[2:6, 3:9, 3:9]) == 7).all()
    assert zarr.config.get("async.concurrency") == before
