"""Predict: a network run block by block gives what the network gives on the
whole zero-padded volume; volara-torch's own config and results; the
checks made before any block runs; which ``predict`` a config gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import volara_test_plugin
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import prepare_ds
from pydantic import ValidationError

from processes import volara_cli
from volara.blockwise import Predict, get_task, load_task, pipeline_config, task_config
from volara.blockwise.registry import dump_config
from volara.datasets import LSD, Affs, Raw
from volara.models import TorchModel

REFERENCE = Path(__file__).parent / "predict_reference"
VOXEL_SIZE = Coordinate(8, 4, 4)
OFFSET = Coordinate(16, 8, 12)


class UNet(torch.nn.Module):
    """Two levels, valid convolutions: input 18 + 2k gives output 2 + 2k.
    Returns affinities (sigmoid) and a second output in (-1, 1) (tanh)."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.down = torch.nn.Sequential(
            torch.nn.Conv3d(in_channels, 4, 3), torch.nn.ReLU(),
            torch.nn.Conv3d(4, 4, 3), torch.nn.ReLU(),
        )  # fmt: skip
        self.pool = torch.nn.MaxPool3d(2)
        self.bottom = torch.nn.Sequential(
            torch.nn.Conv3d(4, 8, 3), torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3), torch.nn.ReLU(),
        )  # fmt: skip
        self.up = torch.nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.top = torch.nn.Sequential(
            torch.nn.Conv3d(8, 4, 3), torch.nn.ReLU(),
            torch.nn.Conv3d(4, 4, 3), torch.nn.ReLU(),
        )  # fmt: skip
        self.affs = torch.nn.Conv3d(4, 3, 1)
        self.lsds = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.down(x)
        up = self.up(self.bottom(self.pool(skip)))
        crop = [(skip.shape[i] - up.shape[i]) // 2 for i in range(2, 5)]
        skip = skip[
            :,
            :,
            crop[0] : crop[0] + up.shape[2],
            crop[1] : crop[1] + up.shape[3],
            crop[2] : crop[2] + up.shape[4],
        ]
        features = self.top(torch.cat([skip, up], dim=1))
        return torch.sigmoid(self.affs(features)), torch.tanh(self.lsds(features))


def conv1() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Sigmoid())


def conv3(in_channels: int = 1) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(in_channels, 3, 3), torch.nn.Sigmoid())


# name: (network, min input, min output, step, growth, out_channels, out_range)
NETWORKS = {
    "conv1x1x1": (conv1, (1, 1, 1), (1, 1, 1), (1, 1, 1), (6, 9, 7), 2, (0, 1)),
    "conv3x3x3": (conv3, (3, 3, 3), (1, 1, 1), (1, 1, 1), (7, 8, 10), 3, (0, 1)),
    "unet": (UNet, (18, 18, 18), (2, 2, 2), (2, 2, 2), (4, 6, 8), [3, 2], (-1, 1)),
}


def save_network(name: str, path: Path, **network_kwargs) -> TorchModel:
    """Save network ``name`` (float64 weights, so that blockwise and whole
    volume agree to the last bit) as TorchScript and describe it."""
    make, min_in, min_out, step, growth, out_channels, out_range = NETWORKS[name]
    torch.manual_seed(0)
    network = make(**network_kwargs).double().eval()
    torch.jit.save(torch.jit.script(network), str(path))
    return TorchModel(
        save_path=path,
        in_channels=network_kwargs.get("in_channels", 1),
        min_input_shape=min_in,
        min_output_shape=min_out,
        min_step_shape=step,
        out_channels=out_channels,
        out_range=out_range,
        pred_size_growth=growth,
    )


def write_raw(path: Path, data: np.ndarray, channel_axes: int = 0) -> Raw:
    array = prepare_ds(
        str(path),
        shape=data.shape,
        offset=OFFSET,
        voxel_size=VOXEL_SIZE,
        dtype=data.dtype,
        mode="w",
    )
    array[array.roi] = data
    assert array.channel_dims == channel_axes
    return Raw(store=path)


def whole_volume_prediction(model: TorchModel, raw: np.ndarray) -> list[np.ndarray]:
    """The network on the whole volume, padded with zeros by its context
    (and, above, up to a whole number of output blocks so the network's
    size rules hold), cut back to the volume; stored as uint8."""
    network = model.model().eval()
    context = model.context
    low, high = (context, context) if isinstance(context, Coordinate) else context
    spatial = Coordinate(raw.shape[-3:])
    out = model.eval_output_shape
    blocks = -(-spatial // out) * out
    padded = np.zeros((*raw.shape[:-3], *(blocks + low + high)), dtype=raw.dtype)
    padded[(..., *(slice(lo, lo + s) for lo, s in zip(low, spatial, strict=True)))] = (
        raw
    )
    if raw.ndim == 3:
        padded = padded[None]
    with torch.no_grad():
        outputs = network(torch.as_tensor(padded[None]))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [
        model.to_uint8(output[0].numpy()[(slice(None), *map(slice, spatial))])
        for output in outputs
    ]


def out_datasets(model: TorchModel, tmp_path: Path) -> list:
    stores = [tmp_path / "out.zarr" / "affs", tmp_path / "out.zarr" / "lsds"]
    outputs = model.num_out_channels
    if len(outputs) == 1:
        return [Raw(store=stores[0])]
    return [Affs(store=stores[0], neighborhood=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
            LSD(store=stores[1])]  # fmt: skip


def stored(dataset) -> np.ndarray:
    return np.asarray(zarr.open_array(str(dataset.store), mode="r")[:])


def raw_volume(shape=(22, 30, 26), channels: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(7)
    full = (channels,) + shape if channels else shape
    return rng.normal(0, 1, full)


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "2-workers"])
def test_blockwise_equals_the_whole_padded_volume(tmp_path, name, workers):
    data = raw_volume()
    raw = write_raw(tmp_path / "raw.zarr" / "raw", data)
    model = save_network(name, tmp_path / "net.pt")
    outputs = out_datasets(model, tmp_path)
    task = Predict(
        checkpoint=model,
        in_data=raw,
        out_data=outputs,
        num_workers=max(workers, 1),
        num_cache_workers=2 if workers else None,
    )
    result = task.run_blockwise(multiprocessing=workers > 0, progress=False)
    blocks = np.prod(
        [-(-s // o) for s, o in zip(data.shape, model.eval_output_shape, strict=True)]
    )
    assert result[task.task_name].completed_count == blocks > 1
    for dataset, expected in zip(
        outputs, whole_volume_prediction(model, data), strict=True
    ):
        got = stored(dataset)
        assert got.dtype == np.uint8
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert 10 < got.mean() < 245  # not a constant: the values carry information


def test_outputs_are_prepared_on_the_input_grid(tmp_path):
    raw = write_raw(tmp_path / "raw.zarr" / "raw", raw_volume())
    model = save_network("unet", tmp_path / "net.pt")
    outputs = out_datasets(model, tmp_path)
    Predict(checkpoint=model, in_data=raw, out_data=outputs).run_blockwise(
        multiprocessing=False, progress=False
    )
    for dataset, channels in zip(outputs, [3, 2], strict=True):
        array = dataset.array("r")
        assert array.shape == (channels, 22, 30, 26)
        assert array.offset == OFFSET and array.voxel_size == VOXEL_SIZE
        assert array.axis_names[0] == f"{dataset.name}^"
        assert array._source_data.chunks == (channels, *model.eval_output_shape)
    assert outputs[0].array("r")._source_data.attrs["neighborhood"] == [
        [1, 0, 0], [0, 1, 0], [0, 0, 1]
    ]  # fmt: skip


def test_roi_channels_and_a_skipped_output(tmp_path):
    """Two input channels, an output skipped with None, and a roi: the
    region around the roi is real data, read as context."""
    data = raw_volume(channels=2)
    raw = write_raw(tmp_path / "raw.zarr" / "raw", data, channel_axes=1)
    model = save_network("unet", tmp_path / "net.pt", in_channels=2)
    roi_voxels = Roi((4, 6, 5), (12, 16, 14))
    roi = Roi(OFFSET + roi_voxels.offset * VOXEL_SIZE, roi_voxels.shape * VOXEL_SIZE)
    lsds = LSD(store=tmp_path / "out.zarr" / "lsds")
    Predict(
        checkpoint=model, in_data=raw, out_data=[None, lsds], roi=roi, num_workers=2
    ).run_blockwise(progress=False)
    assert not (tmp_path / "out.zarr" / "affs").exists()
    # the network on the roi alone, its context filled from the volume
    inside = data[(slice(None), *roi_voxels.to_slices())]
    assert stored(lsds).shape == (2, *roi_voxels.shape)
    network = model.model().eval()
    low = model.context
    read = roi_voxels.grow(low, low)
    blocks = -(-roi_voxels.shape // model.eval_output_shape) * model.eval_output_shape
    read = Roi(read.offset, blocks + low + low)
    padded = np.zeros((2, *read.shape))
    source = read.intersect(Roi((0, 0, 0), data.shape[1:]))
    padded[(slice(None), *(source - read.offset).to_slices())] = data[
        (slice(None), *source.to_slices())
    ]
    with torch.no_grad():
        expected = network(torch.as_tensor(padded[None]))[1][0].numpy()
    expected = model.to_uint8(expected[(slice(None), *map(slice, inside.shape[1:]))])
    np.testing.assert_array_equal(stored(lsds), expected)


def test_volara_torch_config_runs_unchanged_and_matches_volara_torch(tmp_path):
    """tests/predict_reference: a config that volara-torch 1.0.1's own
    Predict dumped, and the affinities its gunpowder pipeline wrote
    (benchmarks/predict_reference.py made them)."""
    for name in ("predict.json", "model.pt", "weights.pt"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    write_raw(tmp_path / "data.zarr" / "raw", np.load(REFERENCE / "raw.npy"))
    config = json.loads((tmp_path / "predict.json").read_text())
    task = load_task(config)
    assert type(task) is Predict and task.checkpoint.checkpoint_file is not None
    assert task_config(task) == {**config, "max_retries": 2, "timeout": None}
    result = run_cli(["run", "predict.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    affs = zarr.open_array(str(tmp_path / "data.zarr" / "affs"), mode="r")
    np.testing.assert_array_equal(affs[:], np.load(REFERENCE / "affs.npy"))
    assert affs.attrs["axis_names"] == ["affs^", "d0", "d1", "d2"]
    assert affs.attrs["types"] == ["affs", "space", "space", "space"]
    assert affs.attrs["offset"] == list(OFFSET)
    assert affs.attrs["voxel_size"] == list(VOXEL_SIZE)


def test_yaml_config_from_the_command_line_with_two_workers(tmp_path):
    data = raw_volume()
    raw = write_raw(tmp_path / "raw.zarr" / "raw", data)
    model = save_network("unet", tmp_path / "net.pt")
    outputs = out_datasets(model, tmp_path)
    task = Predict(checkpoint=model, in_data=raw, out_data=outputs, num_workers=2)
    dump_config(pipeline_config(task), tmp_path / "predict.yaml")
    result = run_cli(["run", "predict.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for dataset, expected in zip(
        outputs, whole_volume_prediction(model, data), strict=True
    ):
        np.testing.assert_array_equal(stored(dataset), expected)


def test_whole_module_with_separate_weights(tmp_path):
    """volara-torch's checkpoint forms: a module saved with torch.save, and
    weights plain or under model_state_dict, which replace the module's."""
    torch.manual_seed(1)
    saved, trained = conv3().double(), conv3().double()
    torch.save(saved, tmp_path / "module.pt")
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    torch.save({"model_state_dict": trained.state_dict()}, tmp_path / "wrapped.pt")
    x = torch.as_tensor(raw_volume((5, 5, 5))[None, None])
    for weights in [None, "plain.pt", "wrapped.pt"]:
        model = TorchModel(
            save_path=tmp_path / "module.pt",
            checkpoint_file=None if weights is None else tmp_path / weights,
            **{key: getattr(save_network_config(), key) for key in GEOMETRY},
        )
        expected = saved if weights is None else trained
        with torch.no_grad():
            assert torch.equal(model.model()(x), expected(x))


GEOMETRY = ("in_channels", "min_input_shape", "min_output_shape", "min_step_shape",
            "out_channels", "out_range")  # fmt: skip


def save_network_config() -> TorchModel:
    return TorchModel(
        save_path="unused.pt",
        in_channels=1,
        min_input_shape=(3, 3, 3),
        min_output_shape=(1, 1, 1),
        min_step_shape=(1, 1, 1),
        out_channels=3,
        out_range=(0, 1),
    )


def test_import_volara_does_not_import_torch():
    code = (
        "import sys, volara, volara.blockwise, volara.models, volara.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ bad input


@pytest.fixture
def setup(tmp_path):
    """A valid Predict setup (conv3x3x3) whose fields the tests break."""
    raw = write_raw(tmp_path / "raw.zarr" / "raw", raw_volume())
    model = save_network("conv3x3x3", tmp_path / "net.pt")
    out = Raw(store=tmp_path / "out.zarr" / "affs")
    return raw, model, out


def refused_before_any_block(task: Predict, error, match: str) -> None:
    with pytest.raises(error, match=match):
        task.run_blockwise(progress=False)
    for dataset in task.output_datasets:
        assert not Path(dataset.store).exists(), "an output was created"
    assert not task.block_ds.exists(), "blocks were tracked"


def test_missing_checkpoint_file(setup, tmp_path):
    raw, model, out = setup
    for field in ("save_path", "checkpoint_file"):
        broken = model.model_copy(update={field: tmp_path / "missing.pt"})
        task = Predict(checkpoint=broken, in_data=raw, out_data=[out])
        refused_before_any_block(
            task, FileNotFoundError, rf"Predict\.checkpoint\.{field}: no file at"
        )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"min_input_shape": (5, 5, 5), "min_output_shape": (1, 1, 1)},
         r"Predict\.checkpoint\.min_output_shape: the network's output 0 is "
         r"\(3, 3, 3\) voxels, the checkpoint says \(1, 1, 1\)"),
        ({"min_input_shape": (3, 3, 3), "min_output_shape": (3, 3, 3)},
         r"Predict\.checkpoint\.min_output_shape: the network's output 0 is "
         r"\(1, 1, 1\) voxels, the checkpoint says \(3, 3, 3\)"),
        ({"out_channels": 4}, r"Predict\.checkpoint\.out_channels: .* 3 channels, "
         "the checkpoint says 4"),
        ({"out_channels": [3, 1]}, r"Predict\.out_data has 1 entries but "
         r"checkpoint\.out_channels describes 2"),
        ({"in_channels": 2}, r"Predict\.in_data: .* gives the network 1 channel\(s\), "
         r"but checkpoint\.in_channels is 2"),
    ],
)  # fmt: skip
def test_network_not_as_described(setup, change, match):
    raw, model, out = setup
    broken = TorchModel(**{**model.model_dump(), "pred_size_growth": None, **change})
    task = Predict(checkpoint=broken, in_data=raw, out_data=[out])
    refused_before_any_block(task, ValueError, match)


def test_affinities_output_with_another_number_of_offsets(setup, tmp_path):
    raw, model, _ = setup
    affs = Affs(store=tmp_path / "out.zarr" / "affs", neighborhood=[[1, 0, 0]])
    task = Predict(checkpoint=model, in_data=raw, out_data=[affs])
    refused_before_any_block(
        task, ValueError, r"Predict\.out_data\[0\]: .* 1 offsets, but .* 3 channels"
    )


def test_input_smaller_than_the_network_input(tmp_path):
    raw = write_raw(tmp_path / "raw.zarr" / "raw", raw_volume((16, 30, 30)))
    model = save_network("unet", tmp_path / "net.pt")
    task = Predict(
        checkpoint=model, in_data=raw, out_data=out_datasets(model, tmp_path)
    )
    refused_before_any_block(
        task, ValueError, r"Predict\.in_data: .* smaller than the network's input"
    )


def test_missing_input(setup, tmp_path):
    _, model, out = setup
    task = Predict(
        checkpoint=model,
        in_data=Raw(store=tmp_path / "nothing.zarr/raw"),
        out_data=[out],
    )
    refused_before_any_block(task, FileNotFoundError, r"Raw\.store: no zarr array")


def test_network_that_fails_on_the_input(setup, tmp_path):
    raw, model, out = setup
    torch.jit.save(torch.jit.script(conv3()), str(tmp_path / "float32.pt"))
    float32 = model.model_copy(update={"save_path": tmp_path / "float32.pt"})
    task = Predict(checkpoint=float32, in_data=raw, out_data=[out])
    refused_before_any_block(
        task, ValueError, r"Predict\.checkpoint: the network fails on an input of "
        r"shape \(1, 1, 3, 3, 3\) and dtype float64"
    )  # fmt: skip


@pytest.mark.parametrize(
    "change, match",
    [
        ({"pred_size_growth": (1, 2, 3), "min_step_shape": (2, 2, 2)},
         "pred_size_growth .* multiple of min_step_shape"),
        ({"context_override": ((1, 1, 1), (2, 2, 2))}, "context_override .* add up"),
        ({"min_output_shape": (2, 2, 2)}, "odd .* context_override"),
        ({"min_output_shape": (1, 1)}, "min_output_shape has 2 values"),
        ({"out_range": (1, 0)}, "out_range"),
    ],
)  # fmt: skip
def test_checkpoint_fields_are_validated(change, match):
    fields = {**save_network_config().model_dump(), **change}
    with pytest.raises(ValidationError, match=match):
        TorchModel(**fields)


def test_unsupported_model_type_is_refused(setup):
    raw, model, out = setup
    config = Predict(checkpoint=model, in_data=raw, out_data=[out]).model_dump(
        mode="json"
    )
    config["checkpoint"] = {"model_type": "jax", "model_path": "model.pkl"}
    with pytest.raises(ValidationError, match="model_type 'jax' is not supported"):
        load_task(config)


def test_out_data_without_any_array(setup):
    raw, model, _ = setup
    with pytest.raises(ValidationError, match="out_data has no array to write"):
        Predict(checkpoint=model, in_data=raw, out_data=[None])


# ------------------------------------------------- a plugin named "predict"


def test_builtin_predict_keeps_its_name_beside_a_plugin_predict(setup):
    """The test plugin registers ``predict`` (as volara-torch does): the
    plain name stays volara's, the plugin's is reachable qualified, and a
    task built from it keeps that name in the configs it writes."""
    raw, model, out = setup
    assert get_task("predict") is Predict
    assert get_task("volara:predict") is Predict
    plugin = get_task("volara-test-plugin:predict")
    assert plugin is volara_test_plugin.PluginPredict
    config = Predict(checkpoint=model, in_data=raw, out_data=[out]).model_dump(
        mode="json"
    )
    assert type(load_task(config)) is Predict
    task = load_task({**config, "task_type": "volara-test-plugin:predict"})
    assert type(task) is plugin
    assert task_config(task)["task_type"] == "volara-test-plugin:predict"
    task.write_config()
    written = json.loads(task.config_file.read_text())
    assert type(load_task(written)) is plugin


def test_plugin_predict_runs_from_a_config(setup, tmp_path):
    raw, model, out = setup
    config = Predict(checkpoint=model, in_data=raw, out_data=[out]).model_dump(
        mode="json"
    )
    for task_type, subdir in [("predict", "a"), ("volara-test-plugin:predict", "b")]:
        (tmp_path / subdir).mkdir()
        dump_config({**config, "task_type": task_type}, tmp_path / subdir / "p.yaml")
        result = run_cli(["run", "p.yaml"], cwd=tmp_path / subdir)
        assert result.returncode == 0, result.stderr
        shutil.move(tmp_path / "out.zarr", tmp_path / subdir / "out.zarr")
    builtin = zarr.open_array(str(tmp_path / "a/out.zarr/affs"), mode="r")[:]
    plugin = zarr.open_array(str(tmp_path / "b/out.zarr/affs"), mode="r")[:]
    np.testing.assert_array_equal(plugin, 255 - builtin)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return volara_cli(*args, cwd=cwd, timeout=300)
