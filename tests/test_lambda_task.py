"""LambdaTask and the function field it carries (PydanticCallable): config
round trips, runs with daisy worker processes and with ``volara-cli``
workers started from the saved config, volara 1 configs, bad input."""

from __future__ import annotations

import base64
import json
import pickle
import sys
import types

import cloudpickle
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from pydantic import ValidationError
from scipy.ndimage import maximum_filter, uniform_filter

from conftest import write_array
from volara.blockwise import LambdaTask, get_task, load_task
from volara.datasets import Labels, Raw
from volara.utils import FunctionReference, PydanticCallable, StrictBaseModel
from volara.workers import LocalWorker

RNG = np.random.default_rng(7)


def double_plus_one(data):
    """A module-level function of this test module: workers cannot import
    this module by name, so it must travel with the config by value."""
    return data * 2 + 1


def write_maximum(block, in_data, out_data):
    """Block style: read with context, write the block's own region."""
    values = in_data.to_ndarray(block.read_roi)
    maxima = maximum_filter(values, size=3, mode="constant", cval=0)
    crop = (block.write_roi - block.read_roi.offset) / in_data.voxel_size
    out_data[block.write_roi] = maxima[crop.to_slices()]


def lambda_task(tmp_path, **kwargs) -> LambdaTask:
    options = dict(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=Raw(store=tmp_path / "d.zarr/out"),
        lambda_func=double_plus_one,
        block_size=[2, 4, 4],
    )
    options.update(kwargs)
    return LambdaTask(**options)


def run(task, multiprocessing=True, blocks: int | None = None) -> np.ndarray:
    """Run ``task`` (expecting ``blocks`` blocks) and return its output."""
    state = task.run_blockwise(multiprocessing=multiprocessing)[task.task_name]
    assert state.failed_count == 0 and state.orphaned_count == 0
    assert state.completed_count == state.total_block_count
    if blocks is not None:
        assert state.total_block_count == blocks
    output = task.out_data.array()
    return output.to_ndarray(output.roi)


# -------------------------------------------------------- the function field


class Holder(StrictBaseModel):
    function: PydanticCallable


def test_a_function_name_is_imported_and_saved_as_its_name():
    holder = Holder(function="numpy:negative")
    assert holder.function(3) == -3
    assert json.loads(holder.model_dump_json()) == {"function": "numpy:negative"}
    assert Holder.model_validate_json(holder.model_dump_json()) == holder
    # worker processes receive the name, not the function
    assert pickle.loads(pickle.dumps(holder.function)) == FunctionReference(
        "numpy:negative"
    )
    nested = Holder(function="volara.blockwise:LambdaTask.model_validate")
    assert nested.function.function == LambdaTask.model_validate


def test_functions_are_saved_pickled_and_come_back_working():
    for function in [lambda x: x * 3, double_plus_one]:
        text = json.loads(Holder(function=function).model_dump_json())["function"]
        assert Holder.model_validate({"function": text}).function(2) == function(2)
    # a function of an installed package is pickled by name
    text = json.loads(Holder(function=np.sqrt).model_dump_json())["function"]
    assert pickle.loads(base64.b64decode(text)) is np.sqrt


def test_this_modules_functions_travel_by_value(tmp_path, monkeypatch):
    text = json.loads(Holder(function=double_plus_one).model_dump_json())["function"]
    # as on a worker that cannot import this test module
    monkeypatch.delitem(sys.modules, __name__)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "tests" not in p])
    loaded = Holder.model_validate({"function": text}).function
    assert loaded is not double_plus_one and loaded(4) == 9


@pytest.mark.parametrize(
    "value, message",
    [
        ("no_such_package.filters:smooth", "cannot import module 'no_such_package"),
        ("numpy:no_such_function", "module 'numpy' has no 'no_such_function'"),
        ("numpy:pi", "'numpy:pi' is a float, not a function"),
        ("x -> x + 1", "expected a function, a 'package.module:function' name"),
        (42, "got a int"),
        (base64.b64encode(pickle.dumps([1, 2])).decode(), "pickled object is a list"),
    ],
)
def test_bad_functions_are_refused_naming_the_field(value, message):
    with pytest.raises(ValidationError, match=message) as error:
        Holder(function=value)
    assert error.value.errors()[0]["loc"] == ("function",)


def test_a_pickle_needing_a_missing_module_says_which():
    module = types.ModuleType("volara_vanished_module")
    exec("def smooth(x):\n    return x\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        text = base64.b64encode(cloudpickle.dumps(module.smooth)).decode()
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(ValidationError, match="needs module 'volara_vanished_module'"):
        Holder(function=text)


def test_the_field_docs_warn_that_unpickling_executes_code():
    description = LambdaTask.model_fields["lambda_func"].description or ""
    assert "executes code: only load configs you trust" in " ".join(description.split())


# ------------------------------------------------------------------- config


def test_round_trip(tmp_path):
    by_name = lambda_task(
        tmp_path,
        lambda_func="numpy:negative",
        call_style="array",
        context=[1, 1, 1],
        out_array_dtype="float32",
        out_channels=[3],
        task_name_suffix="part1",
        roi=[[0, 0, 0], [4, 4, 4]],
    )
    loaded = get_task("lambda").model_validate_json(by_name.model_dump_json())
    assert type(loaded) is LambdaTask and loaded == by_name
    assert loaded.out_array_dtype == np.dtype(np.float32)
    assert json.loads(by_name.model_dump_json())["out_array_dtype"] == "float32"
    # volara 1 took numpy types
    assert lambda_task(tmp_path, out_array_dtype=np.uint8).out_array_dtype == "uint8"
    pickled = lambda_task(tmp_path, lambda_func=lambda x: x - 1, block_size=None)
    loaded = load_task(pickled.model_dump(mode="json"))
    assert loaded.model_dump(exclude={"lambda_func"}) == pickled.model_dump(
        exclude={"lambda_func"}
    )
    assert loaded.lambda_func(5) == 4


def test_a_volara_1_config_loads_and_runs(tmp_path):
    raw = RNG.integers(0, 100, (4, 8, 8)).astype(np.uint16)
    write_array(tmp_path / "d.zarr/raw", raw)
    # the LambdaTask part of a config volara 1.0.5 saves: the function as
    # base64 cloudpickle, every field spelled out
    config = {
        "task_type": "lambda",
        "roi": None,
        "num_workers": 1,
        "num_cache_workers": None,
        "worker_config": None,
        "fit": "shrink",
        "read_write_conflict": False,
        "in_data": {"dataset_type": "raw", "store": str(tmp_path / "d.zarr/raw")},
        "out_data": {"dataset_type": "labels", "store": str(tmp_path / "d.zarr/out")},
        "lambda_func": base64.b64encode(cloudpickle.dumps(lambda x: x + 7)).decode(),
        "out_array_dtype": None,
        "init_out": True,
        "task_name_suffix": None,
        "block_size": [2, 4, 4],
    }
    task = load_task(json.loads(json.dumps(config)))
    assert isinstance(task, LambdaTask) and isinstance(task.out_data, Labels)
    np.testing.assert_array_equal(run(task, multiprocessing=False, blocks=8), raw + 7)


# --------------------------------------------------------------------- runs


def test_runs_with_two_workers_and_prepares_the_output_from_the_input(tmp_path):
    raw = RNG.integers(0, 100, (4, 8, 8)).astype(np.int16)
    write_array(
        tmp_path / "d.zarr/raw",
        raw,
        voxel_size=(4, 2, 2),
        offset=(8, 0, 4),
        chunk_shape=(2, 4, 4),
    )
    # no block_size: the input's chunks
    task = lambda_task(tmp_path, block_size=None, num_workers=2)
    np.testing.assert_array_equal(run(task, blocks=8), raw * 2 + 1)
    output = task.out_data.array()
    assert output.dtype == np.int16
    assert output.roi == Roi((8, 0, 4), (16, 16, 16))
    assert output.voxel_size == Coordinate(4, 2, 2)
    assert output.axis_names == ["z", "y", "x"]
    assert tuple(output.chunk_shape) == (2, 4, 4)


def test_cli_workers_load_the_function_from_the_saved_config(tmp_path):
    """`volara-cli blockwise-worker` processes rebuild each task from its
    JSON config: a function of this module, a lambda and a function name
    all have to survive that trip."""
    raw = RNG.random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)
    functions = {
        "module_function": (double_plus_one, raw * 2 + 1),
        "lambda": (lambda x: x - 0.5, raw - 0.5),
        "by_name": ("numpy:sqrt", np.sqrt(raw)),
    }
    tasks = [
        lambda_task(
            tmp_path,
            out_data=Raw(store=tmp_path / f"d.zarr/{name}"),
            lambda_func=function,
            num_workers=2 if name == "module_function" else 1,
            worker_config=LocalWorker(),
        )
        for name, (function, _) in functions.items()
    ]
    states = (tasks[0] | tasks[1] | tasks[2]).run_blockwise()
    for task, (name, (_, expected)) in zip(tasks, functions.items(), strict=True):
        state = states[task.task_name]
        assert state.completed_count == state.total_block_count == 8, name
        output = task.out_data.array()
        np.testing.assert_allclose(output.to_ndarray(output.roi), expected, rtol=1e-6)
    saved = json.loads(tasks[2].config_file.read_text())
    assert saved["lambda_func"] == "numpy:sqrt"


def test_context_lets_a_filter_run_without_seams(tmp_path):
    raw = RNG.random((6, 12, 12)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)

    def box_mean(data):
        return uniform_filter(data, size=3, mode="nearest")

    expected = uniform_filter(raw, size=3, mode="nearest")
    with_context = lambda_task(tmp_path, lambda_func=box_mean, context=[1, 1, 1])
    result = run(with_context, multiprocessing=False, blocks=27)
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    without = lambda_task(
        tmp_path, out_data=Raw(store=tmp_path / "d.zarr/seams"), lambda_func=box_mean
    )
    assert np.abs(run(without, multiprocessing=False) - expected).max() > 0.05


def test_block_style_reads_and_writes_itself(tmp_path):
    raw = RNG.integers(1, 200, (6, 12, 12)).astype(np.uint8)
    write_array(tmp_path / "d.zarr/raw", raw, voxel_size=(2, 1, 1))
    task = lambda_task(
        tmp_path,
        lambda_func=write_maximum,
        call_style="block",
        context=[1, 1, 1],
        num_workers=2,
    )
    result = run(task, blocks=27)
    np.testing.assert_array_equal(
        result, maximum_filter(raw, size=3, mode="constant", cval=0)
    )


def test_output_channels_and_dtype_can_differ_from_the_input(tmp_path):
    raw = RNG.random((2, 4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)
    task = lambda_task(
        tmp_path,
        lambda_func=lambda x: np.stack([x.sum(axis=0), x[0], x[1]]) > 1.0,
        out_channels=[3],
        out_array_dtype="uint8",
    )
    result = run(task, multiprocessing=False, blocks=8)
    assert result.dtype == np.uint8 and result.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(result[0], raw.sum(axis=0) > 1.0)
    np.testing.assert_array_equal(result[1], np.zeros((4, 8, 8)))
    to_scalar = lambda_task(
        tmp_path,
        out_data=Raw(store=tmp_path / "d.zarr/sum"),
        lambda_func=lambda x: x.sum(axis=0),
        out_channels=[],
    )
    assert run(to_scalar, multiprocessing=False).shape == (4, 8, 8)


def test_an_existing_output_is_patched_where_the_input_is(tmp_path):
    write_array(
        tmp_path / "d.zarr/out", np.zeros((8, 8, 8), np.int32), chunk_shape=(4, 4, 4)
    )
    window = RNG.integers(1, 9, (4, 4, 4)).astype(np.int32)
    write_array(tmp_path / "d.zarr/raw", window, offset=(2, 4, 0))
    task = lambda_task(
        tmp_path, init_out=False, block_size=None, task_name_suffix="window"
    )
    assert task.task_name == "out-lambda-window"
    # blocks tile the output by its chunks; only those touching the input run
    result = run(task, multiprocessing=False, blocks=8)
    expected = np.zeros((8, 8, 8), np.int32)
    expected[2:6, 4:8, 0:4] = window * 2 + 1
    np.testing.assert_array_equal(result, expected)
    task.drop(drop_outputs=True)
    assert (tmp_path / "d.zarr/out").exists()  # not ours to delete


# ---------------------------------------------------------------- bad input


def test_bad_fields_are_refused_at_construction(tmp_path):
    for kwargs, message in [
        ({"lambda_func": "no_such_package:f"}, "lambda_func"),
        ({"out_array_dtype": "pixels"}, "out_array_dtype"),
        ({"out_channels": [0]}, "out_channels"),
        ({"call_style": "voxel"}, "call_style"),
        ({"task_name_suffix": "a/b"}, "task_name_suffix"),
    ]:
        with pytest.raises(ValidationError, match=message):
            lambda_task(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"call_style": "block"},
            r"LambdaTask.lambda_func: with call_style='block' it is called as "
            r"lambda_func\(block, in_data=..., out_data=...\)",
        ),
        (
            {"lambda_func": write_maximum},
            "LambdaTask.lambda_func: with call_style='array' it is called as",
        ),
        ({"block_size": [4, 4]}, r"LambdaTask.block_size \(4, 4\) has 2 values"),
        ({"context": [1, 1]}, r"LambdaTask.context \(1, 1\) has 2 values"),
        (
            {"init_out": False},
            "LambdaTask.out_data: init_out is False, so .* must exist already",
        ),
    ],
)
def test_bad_inputs_are_refused_before_any_block_runs(tmp_path, kwargs, message):
    write_array(tmp_path / "d.zarr/raw", np.ones((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=message):
        run(lambda_task(tmp_path, **kwargs))
    assert not (tmp_path / "d.zarr/out").exists()


def test_a_result_of_the_wrong_shape_names_the_function(tmp_path):
    write_array(tmp_path / "d.zarr/raw", np.ones((4, 8, 8), np.float32))
    task = lambda_task(tmp_path, lambda_func=lambda x: x[0])
    task.prepare_run()
    with pytest.raises(
        ValueError,
        match=r"LambdaTask.lambda_func returned shape \(4, 4\) for input of shape "
        r"\(2, 4, 4\); out_data needs \(2, 4, 4\)",
    ):
        task.process_roi(Roi((0, 0, 0), (2, 4, 4)))
