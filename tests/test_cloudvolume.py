"""CloudVolume datasets: precomputed volumes written locally (``file://``)
with CloudVolume, read as volara datasets (axes, voxel size, offset,
channels, reads sticking out of the volume), from JSON and YAML configs,
refused as outputs, and read by a task run with two workers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from pydantic import TypeAdapter, ValidationError

from conftest import write_array
from volara.blockwise import LambdaTask
from volara.datasets import AnyDataset, CloudVolumeWrapper, Labels, Raw, read_region

cloudvolume = pytest.importorskip("cloudvolume")

RNG = np.random.default_rng(3)
# precomputed order (x, y, z); volara reads z, y, x
SIZE_XYZ = (20, 16, 12)
VOXEL_OFFSET_XYZ = (3, 2, 1)
RESOLUTION_XYZ = (4, 4, 8)
VOXEL_SIZE = Coordinate(8, 4, 4)
OFFSET = Coordinate(1 * 8, 2 * 4, 3 * 4)


def write_precomputed(
    path, data_xyzc: np.ndarray, layer_type: str, encoding: str = "raw"
) -> str:
    """A precomputed layer at ``path`` holding ``data_xyzc`` (x, y, z, c)."""
    url = f"file://{path}"
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=data_xyzc.shape[3],
        layer_type=layer_type,
        data_type=data_xyzc.dtype.name,
        encoding=encoding,
        resolution=list(RESOLUTION_XYZ),
        voxel_offset=list(VOXEL_OFFSET_XYZ),
        chunk_size=[8, 8, 4],
        volume_size=list(SIZE_XYZ),
    )
    volume = cloudvolume.CloudVolume(url, info=info, progress=False)
    volume.commit_info()
    volume[:, :, :] = data_xyzc
    return url


def zyx(data_xyzc: np.ndarray) -> np.ndarray:
    """What volara should read: channels first, z, y, x, one channel dropped."""
    data = data_xyzc.transpose(3, 2, 1, 0)
    return data[0] if data.shape[0] == 1 else data


@pytest.fixture
def image(tmp_path):
    data = RNG.integers(0, 255, (*SIZE_XYZ, 1), dtype=np.uint8)
    return write_precomputed(tmp_path / "image", data, "image"), data


@pytest.fixture
def affs(tmp_path):
    data = RNG.random((*SIZE_XYZ, 3), dtype=np.float32)
    return write_precomputed(tmp_path / "affs", data, "image"), data


@pytest.fixture
def segmentation(tmp_path):
    data = RNG.integers(0, 2**40, (*SIZE_XYZ, 1), dtype=np.uint64)
    # how segmentations are usually stored
    url = write_precomputed(
        tmp_path / "seg", data, "segmentation", "compressed_segmentation"
    )
    return url, data


@pytest.mark.parametrize("layer", ["image", "affs", "segmentation"])
def test_metadata_and_values(layer, request):
    url, data = request.getfixturevalue(layer)
    array = CloudVolumeWrapper(store=url).array()
    expected = zyx(data)
    assert array.voxel_size == VOXEL_SIZE
    assert array.offset == OFFSET
    assert array.roi == Roi(OFFSET, VOXEL_SIZE * Coordinate(12, 16, 20))
    assert array.shape == expected.shape
    assert array.dtype == data.dtype
    assert array.channel_dims == (1 if layer == "affs" else 0)
    assert array.units == ["nm", "nm", "nm"]
    np.testing.assert_array_equal(read_region(array, array.roi), expected)


def test_region_inside(affs):
    url, data = affs
    array = CloudVolumeWrapper(store=url).array()
    roi = Roi(
        OFFSET + VOXEL_SIZE * Coordinate(2, 3, 5), VOXEL_SIZE * Coordinate(4, 6, 7)
    )
    expected = zyx(data)[:, 2:6, 3:9, 5:12]
    np.testing.assert_array_equal(read_region(array, roi), expected)


def test_region_sticking_out_is_filled_with_zero(segmentation):
    url, data = segmentation
    array = CloudVolumeWrapper(store=url).array()
    roi = Roi(OFFSET - VOXEL_SIZE * 2, VOXEL_SIZE * Coordinate(5, 6, 7))
    values = read_region(array, roi)
    assert values.shape == (5, 6, 7)
    np.testing.assert_array_equal(values[2:, 2:, 2:], zyx(data)[:3, :4, :5])
    assert (
        not values[:2].any() and not values[:, :2].any() and not values[:, :, :2].any()
    )


def test_channels_and_overrides(affs):
    url, data = affs
    dataset = CloudVolumeWrapper(
        store=url, channels=[2, 0], voxel_size=[16, 4, 4], offset=[0, 0, 0]
    )
    array = dataset.array()
    assert array.voxel_size == Coordinate(16, 4, 4)
    assert array.offset == Coordinate(0, 0, 0)
    np.testing.assert_array_equal(read_region(array, array.roi), zyx(data)[[2, 0]])


def test_from_json_and_yaml(affs):
    url, data = affs
    config = {"dataset_type": "cloudvolume", "store": url, "channels": 1}
    adapter = TypeAdapter(AnyDataset)
    from_json = adapter.validate_json(json.dumps(config))
    from_yaml = adapter.validate_python(yaml.safe_load(yaml.safe_dump(config)))
    assert isinstance(from_json, CloudVolumeWrapper) and from_json == from_yaml
    assert adapter.validate_json(adapter.dump_json(from_json)) == from_json
    np.testing.assert_array_equal(
        read_region(from_json.array(), from_json.array().roi), zyx(data)[1]
    )


def test_read_only(image, tmp_path):
    url, _ = image
    dataset = CloudVolumeWrapper(store=url)
    assert dataset.exists() and dataset.name == "image"
    assert not CloudVolumeWrapper(store=f"file://{tmp_path}/missing").exists()
    for write in (lambda: dataset.array("r+"), dataset.drop, dataset.prepare):
        with pytest.raises(PermissionError, match="CloudVolumeWrapper.writable"):
            write()
    with pytest.raises(ValidationError, match="writable"):
        CloudVolumeWrapper(store=url, writable=True)
    with pytest.raises(ValidationError, match="s3_kwargs configures zarr"):
        CloudVolumeWrapper(store=url, s3_kwargs={"key": "k"})
    with pytest.raises(ValidationError, match="not a CloudVolume path"):
        CloudVolumeWrapper(store=str(tmp_path / "image"))


def test_missing_package_says_how_to_install(image, monkeypatch):
    url, _ = image
    # what `import cloudvolume` does where the package is not installed
    monkeypatch.setitem(sys.modules, "cloudvolume", None)
    with pytest.raises(ImportError, match=r'pip install "volara\[cloudvolume\]"'):
        CloudVolumeWrapper(store=url).array()


def test_refused_as_task_output(image, tmp_path):
    url, data = image
    write_array(tmp_path / "d.zarr/raw", zyx(data))
    task = LambdaTask(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=CloudVolumeWrapper(store=url),
        lambda_func=mean_above_half,
    )
    with pytest.raises(PermissionError, match="CloudVolumeWrapper.writable"):
        task.run_blockwise(multiprocessing=False)


def mean_above_half(affs: np.ndarray) -> np.ndarray:
    return (affs.mean(axis=0) > 0.5).astype(np.uint8)


def test_task_reads_precomputed_like_zarr(affs, tmp_path):
    url, data = affs
    write_array(
        tmp_path / "d.zarr/affs", zyx(data), voxel_size=VOXEL_SIZE, offset=OFFSET
    )
    results = []
    for name, in_data in [
        ("from_zarr", Raw(store=tmp_path / "d.zarr/affs")),
        ("from_precomputed", CloudVolumeWrapper(store=url)),
    ]:
        task = LambdaTask(
            in_data=in_data,
            out_data=Labels(store=tmp_path / f"d.zarr/{name}"),
            lambda_func=mean_above_half,
            out_channels=[],
            out_array_dtype="uint8",
            context=[1, 2, 2],
            block_size=[4, 8, 8],
            num_workers=2,
        )
        state = task.run_blockwise(multiprocessing=True)[task.task_name]
        assert state.failed_count == 0
        assert state.completed_count == state.total_block_count == 18
        out = task.out_data.array()
        assert out.roi == Roi(OFFSET, VOXEL_SIZE * Coordinate(12, 16, 20))
        results.append(read_region(out, out.roi))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[1], mean_above_half(zyx(data)))
