"""volara 1.0.5's dataset surface on volara 2: `channels` on every dataset
type in 1.0.5's forms, dataset configs as 1.0.5's ``model_dump`` writes them,
and `Affs.attrs["neighborhood"]` as Coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate
from pydantic import TypeAdapter, ValidationError

from conftest import write_array
from volara.blockwise import Threshold
from volara.datasets import LSD, Affs, AnyDataset, Labels, Raw

ANY_DATASET: TypeAdapter = TypeAdapter(AnyDataset)
DATASET_TYPES = [Raw, Labels, LSD, Affs]
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 2, 0], [0, 0, 2]]


def make(cls, store, **kwargs):
    if cls is Affs:
        kwargs.setdefault("neighborhood", NEIGHBORHOOD)
    return cls(store=store, **kwargs)


def read(dataset) -> np.ndarray:
    array = dataset.array()
    return array.to_ndarray(array.roi)


@pytest.fixture
def time_channels(tmp_path):
    """A [T=2, C=6, Z, Y, X] array whose voxels hold 10 * t + c."""
    data = np.zeros((2, 6, 2, 3, 4), np.float32)
    for t, c in np.ndindex(2, 6):
        data[t, c] = 10 * t + c
    write_array(tmp_path / "d.zarr/tc", data)
    return tmp_path / "d.zarr/tc"


@pytest.mark.parametrize("cls", DATASET_TYPES)
def test_an_integer_picks_one_channel_and_drops_the_axis(cls, time_channels):
    values = read(make(cls, time_channels, channels=1))
    assert values.shape == (6, 2, 3, 4)
    assert (values == 10 + np.arange(6)[:, None, None, None]).all()


@pytest.mark.parametrize("cls", DATASET_TYPES)
def test_nested_lists_apply_one_axis_after_another(cls, time_channels):
    values = read(make(cls, time_channels, channels=[1, [0, 2, 4]]))
    assert values.shape == (3, 2, 3, 4)
    assert [float(v) for v in values[:, 0, 0, 0]] == [10, 12, 14]
    # each step indexes the first axis the previous steps left
    values = read(make(cls, time_channels, channels=[0, [5, 0]]))
    assert values.shape == (2, 2, 3, 4)
    assert [float(v) for v in values[:, 0, 0, 0]] == [5, 0]


@pytest.mark.parametrize("cls", DATASET_TYPES)
def test_a_flat_list_keeps_volara_2s_meaning_selecting_channels(cls, time_channels):
    # volara 1.0.5 would read [1, 0] as time point 1, then channel 0
    values = read(make(cls, time_channels, channels=[1, 0]))
    assert values.shape == (2, 6, 2, 3, 4)
    assert [float(v) for v in values[:, 3, 0, 0, 0]] == [13, 3]


@pytest.mark.parametrize("cls", DATASET_TYPES)
def test_a_list_of_channels_stays_writable(cls, tmp_path):
    write_array(tmp_path / "d.zarr/w", np.zeros((5, 2, 3, 4), np.uint8))
    for channels, written in [([[0, 2]], [0, 2]), ([3, 1], [3, 1])]:
        array = make(cls, tmp_path / "d.zarr/w", channels=channels).array("r+")
        assert array.is_writeable and array.shape == (2, 2, 3, 4)
        array[array.roi] = np.full((2, 2, 3, 4), 7, np.uint8)
        stored = zarr.open_array(str(tmp_path / "d.zarr/w"))[:]
        assert (stored[written] == 7).all()
        stored_channels = [c for c in range(5) if (stored[c] == 7).all()]
        assert set(written) <= set(stored_channels)
    assert sorted(stored_channels) == [0, 1, 2, 3]


def test_a_task_reads_a_channel_picked_by_an_integer(tmp_path):
    data = np.zeros((3, 4, 4, 4), np.float32)
    data[1, :2] = 1.0
    data[0] = data[2] = 1.0
    write_array(tmp_path / "d.zarr/probs", data)
    task = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/probs", channels=1),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 2, 2],
    )
    task.run_blockwise(multiprocessing=False)
    np.testing.assert_array_equal(read(task.mask), data[1] > 0.5)


def test_raw_applies_1_0_5_forms_after_normalization_and_stack(tmp_path):
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    group.attrs["omero"] = {
        "channels": [
            {"window": {"min": 0, "max": 10}},
            {"window": {"min": 0, "max": 4}},
        ]
    }
    write_array(
        tmp_path / "img.zarr/s0",
        np.stack([np.full((2, 2, 2), v, np.uint8) for v in (5, 2)]),
    )
    write_array(tmp_path / "img.zarr/extra", np.full((2, 2, 2, 2), 30, np.uint8))
    # an integer indexes the normalized channels: channel 1 is 2 / 4
    raw = Raw(
        store=tmp_path / "img.zarr/s0", ome_norm=tmp_path / "img.zarr", channels=1
    )
    values = read(raw)
    assert values.shape == (2, 2, 2)
    np.testing.assert_allclose(values, 0.5)
    # [[...]] indexes the stacked channels (0, 1 own; 2, 3 stacked), as in 1.0.5
    stacked = Raw(
        store=tmp_path / "img.zarr/s0",
        scale_shift=(0.1, 0.0),
        stack=Raw(store=tmp_path / "img.zarr/extra"),
        channels=[[3, 0]],
    )
    values = read(stacked)
    assert values.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(values[0], 30)
    np.testing.assert_allclose(values[1], 0.5, rtol=1e-6)


@pytest.mark.parametrize("bad", [[], [[]], [0, []]])
def test_an_empty_selection_is_refused_naming_the_field(bad):
    with pytest.raises(ValidationError, match="channels") as error:
        Labels(store="x.zarr", channels=bad)
    assert "selects nothing" in str(error.value)


@pytest.mark.parametrize("bad", ["0", True, [0.5], [[[0]]]])
def test_channel_values_of_the_wrong_type_are_refused(bad):
    with pytest.raises(ValidationError, match="channels"):
        Labels(store="x.zarr", channels=bad)


def test_an_index_out_of_range_names_the_field_and_the_array(time_channels):
    with pytest.raises(ValueError, match=r"LSD\.channels: \[0, \[7\]\].*length 6"):
        LSD(store=time_channels, channels=[0, [7]]).array()


# configs as volara 1.0.5's model_dump writes them (recorded with 1.0.5)
VOLARA_1_DUMPS = [
    {
        "store": "d.zarr/raw",
        "voxel_size": None,
        "offset": None,
        "axis_names": None,
        "units": None,
        "writable": True,
        "channels": [[0, 2]],
        "zarr_kwargs": {},
        "s3_kwargs": None,
        "dataset_type": "raw",
        "ome_norm": None,
        "scale_shift": (1.0, 0.0),
        # 1.0.5 types `stack` as the base class: its dump has no dataset_type
        "stack": {
            "store": "x",
            "voxel_size": None,
            "offset": None,
            "axis_names": None,
            "units": None,
            "writable": True,
            "channels": None,
            "zarr_kwargs": {},
            "s3_kwargs": None,
        },
    },
    {
        "store": "d.zarr/raw",
        "voxel_size": None,
        "offset": None,
        "axis_names": None,
        "units": None,
        "writable": True,
        "channels": 0,
        "zarr_kwargs": {},
        "s3_kwargs": None,
        "dataset_type": "raw",
        "ome_norm": "x",
        "scale_shift": None,
        "stack": None,
    },
    {
        "store": "d.zarr/affs",
        "voxel_size": None,
        "offset": None,
        "axis_names": None,
        "units": None,
        "writable": True,
        "channels": None,
        "zarr_kwargs": {},
        "s3_kwargs": None,
        "dataset_type": "affs",
        "neighborhood": [(1, 0, 0), (0, 1, 0), (0, 0, 1)],
    },
    {
        "store": "d.zarr/l",
        "voxel_size": [4, 4, 4],
        "offset": None,
        "axis_names": None,
        "units": None,
        "writable": False,
        "channels": None,
        "zarr_kwargs": {},
        "s3_kwargs": None,
        "dataset_type": "labels",
    },
    {
        "store": "d.zarr/l",
        "voxel_size": None,
        "offset": None,
        "axis_names": None,
        "units": None,
        "writable": True,
        "channels": [0, [1, 2]],
        "zarr_kwargs": {},
        "s3_kwargs": None,
        "dataset_type": "lsd",
    },
]


@pytest.mark.parametrize("dump", VOLARA_1_DUMPS, ids=lambda d: d["dataset_type"])
def test_volara_1_dumps_load_and_round_trip(dump):
    dataset = ANY_DATASET.validate_python(dump)
    assert dataset.dataset_type == dump["dataset_type"]
    assert dataset.channels == dump["channels"]
    again = ANY_DATASET.validate_json(dataset.model_dump_json())
    assert type(again) is type(dataset) and again == dataset


def test_an_untagged_stack_from_volara_1_reads_as_raw():
    raw = ANY_DATASET.validate_python(VOLARA_1_DUMPS[0])
    assert type(raw.stack) is Raw
    assert str(raw.stack.store) == "x"


def test_affs_attrs_hold_the_neighborhood_as_coordinates(tmp_path):
    neighborhood = [Coordinate(0, 1), Coordinate(1, 0)]
    affs = Affs(store=tmp_path / "affs.zarr", neighborhood=neighborhood)
    assert affs.attrs["neighborhood"] == neighborhood
    assert all(type(c) is Coordinate for c in affs.attrs["neighborhood"])
    affs.prepare(
        (2, 10, 10), (1, 5, 5), (0, 0), (1, 1), ("nm", "nm"), None, None, np.float32
    )
    assert zarr.open_array(str(tmp_path / "affs.zarr")).attrs["neighborhood"] == [
        [0, 1],
        [1, 0],
    ]
    loaded = Affs(store=tmp_path / "affs.zarr")
    assert loaded.attrs["neighborhood"] == neighborhood
    with pytest.raises(ValidationError):
        Affs(store=tmp_path / "affs.zarr", neighborhood=[Coordinate(5, 5)])
