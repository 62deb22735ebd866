"""Predict: run a trained network block by block (affinities, LSDs, masks
from raw data).

Each block reads the network's input shape around the region it writes
(zeros where that sticks out of the input), runs the network, and writes
each output as uint8 scaled from the model's ``out_range``. The network is
loaded once per worker, on ``cuda:<worker id % GPUs>`` or the CPU.
``num_cache_workers`` threads per worker read and write blocks while one of
them runs the network, so the device does not wait for zarr.

The config is volara-torch 1.0.1's ``Predict`` (``task_type: "predict"``),
run without gunpowder. With volara-torch installed as well, ``"predict"``
still names this task; volara-torch's is ``"volara-torch:predict"`` (see
`volara.blockwise.registry`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pydantic import Field, field_validator

from ..datasets import LSD, Affs, Dataset, Raw, read_region, write_region
from ..models import SUPPORTED_MODEL_TYPES, TorchModel, import_torch
from ..utils import PydanticCoordinate
from .blockwise import BlockwiseTask
from .grid import prepare_like

logger = logging.getLogger(__name__)

OutData = Annotated[Raw | Affs | LSD, Field(discriminator="dataset_type")]


class Predict(BlockwiseTask):
    """Predict with a trained network over the whole input, block by block.

    Blocks follow the network: each writes `TorchModel.eval_output_shape`
    voxels and reads `TorchModel.eval_input_shape` voxels around them.
    """

    task_type: Literal["predict"] = "predict"
    checkpoint: TorchModel
    """The network: where it is stored and its input and output shapes
    (``model_type: "torch"``)."""
    in_data: Raw
    """The network's input, e.g. EM intensities. The network sees the
    values as read (set `Raw.scale_shift` to give it the range it was trained
    on, e.g. ``[0.00392156862, 0]`` for uint8 to 0..1), with a batch axis and
    a channel axis of 1 added where the array has none. Outside the array it
    sees zeros."""
    out_data: list[OutData | None]
    """One array per network output, in the order the network returns them
    (``None`` skips that output). Each is written as uint8 with a leading
    channel axis, on the input's voxel grid, covering the input (or
    `roi`)."""
    fit: Literal["overhang"] = "overhang"
    read_write_conflict: Literal[False] = False
    worker_imports: ClassVar[tuple[str, ...]] = ("torch",)
    context_override: tuple[PydanticCoordinate, PydanticCoordinate] | None = None
    """``(low, high)`` context in voxels, overriding the checkpoint's (and
    its `TorchModel.context_override`); the two must add up to the
    checkpoint's input shape minus its output shape."""

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _supported_model_type(cls, checkpoint: Any) -> Any:
        model_type = (
            checkpoint.get("model_type", "torch")
            if isinstance(checkpoint, dict)
            else getattr(checkpoint, "model_type", "torch")
        )
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported: volara's Predict runs "
                "PyTorch models (model_type 'torch': a module saved with torch.save "
                "or torch.jit.save). Export the network to PyTorch, or run it with "
                "the plugin that defines that model type."
            )
        return checkpoint

    @field_validator("out_data")
    @classmethod
    def _writes_something(cls, out_data: list[Dataset | None]) -> list:
        if not any(dataset is not None for dataset in out_data):
            raise ValueError(
                "out_data has no array to write: give one array per network output "
                "(None skips an output)"
            )
        return out_data

    # ------------------------------------------------------------- geometry

    @property
    def task_name(self) -> str:
        names = "-".join(dataset.name for dataset in self.output_datasets)
        return f"{names}-{self.task_type}"

    @property
    def output_datasets(self) -> list[Dataset]:
        return [dataset for dataset in self.out_data if dataset is not None]

    @property
    def voxel_size(self) -> Coordinate:
        return self.in_data.array("r").voxel_size

    @property
    def write_roi(self) -> Roi:
        total = self.in_data.array("r").roi
        if self.roi is not None:
            total = total.intersect(self.roi)
            if not total.empty:  # funlib snaps an empty region to an unbounded one
                total = total.snap_to_grid(self.voxel_size, mode="shrink")
        return total

    @property
    def write_size(self) -> Coordinate:
        return self.checkpoint.eval_output_shape * self.voxel_size

    @property
    def context_voxels(self) -> tuple[Coordinate, Coordinate]:
        """Voxels read below and above each block's written region."""
        context = self.context_override or self.checkpoint.context
        if isinstance(context, Coordinate):
            return context, context
        return Coordinate(context[0]), Coordinate(context[1])

    @property
    def context_size(self) -> tuple[Coordinate, Coordinate]:
        low, high = self.context_voxels
        return low * self.voxel_size, high * self.voxel_size

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output; an output of ``None`` channels has as
        many as the input."""
        return self._out_channels(self.in_channels)

    def _out_channels(self, in_channels: int) -> list[int]:
        return [
            in_channels if channels is None else channels
            for channels in self.checkpoint.num_out_channels
        ]

    @property
    def in_channels(self) -> int:
        """Channels of `in_data` as the network sees them."""
        return network_channels(self.in_data.array("r"))

    # ------------------------------------------------------------- checks

    def check_config(self) -> None:
        self.checkpoint.check_files("Predict.checkpoint")
        array = self.in_data.array("r")
        self._check_input(array)
        out_channels = self._out_channels(network_channels(array))
        self._check_outputs(out_channels)
        self._check_context()
        self._check_network(array, out_channels)

    def _check_input(self, array: Array) -> None:
        dims = self.checkpoint.min_input_shape.dims
        if array.voxel_size.dims != dims:
            raise ValueError(
                f"Predict.in_data: {self.in_data.store!s} has "
                f"{array.voxel_size.dims} spatial axes, the network "
                f"(checkpoint.min_input_shape) {dims}"
            )
        if array.channel_dims > 2:
            raise ValueError(
                f"Predict.in_data: {self.in_data.store!s} has {array.channel_dims} "
                "channel axes; the network takes (batch, channels, ...) at most. "
                "Select channels with in_data.channels."
            )
        channels = network_channels(array)
        if channels != self.checkpoint.in_channels:
            raise ValueError(
                f"Predict.in_data: {self.in_data.store!s} gives the network "
                f"{channels} channel(s), but checkpoint.in_channels is "
                f"{self.checkpoint.in_channels}. Select channels with "
                "in_data.channels, or fix in_channels."
            )
        extent = array.roi.shape / array.voxel_size
        network_input = self.checkpoint.min_input_shape
        if any(e < n for e, n in zip(extent, network_input, strict=True)):
            raise ValueError(
                f"Predict.in_data: {self.in_data.store!s} is {tuple(extent)} voxels, "
                f"smaller than the network's input checkpoint.min_input_shape "
                f"{tuple(network_input)}: most of every block would be padding. "
                "Use a larger volume or a network with a smaller input."
            )
        if self.roi is not None and self.roi.dims != dims:
            raise ValueError(
                f"Predict.roi has {self.roi.dims} dimensions; the data has {dims}"
            )

    def _check_outputs(self, out_channels: list[int]) -> None:
        outputs = len(self.checkpoint.num_out_channels)
        if len(self.out_data) != outputs:
            raise ValueError(
                f"Predict.out_data has {len(self.out_data)} entries but "
                f"checkpoint.out_channels describes {outputs} network output(s): "
                "give one array (or None to skip it) per output"
            )
        for index, (dataset, channels) in enumerate(
            zip(self.out_data, out_channels, strict=True)
        ):
            if (
                isinstance(dataset, Affs)
                and len(dataset.neighborhood or []) != channels
            ):
                raise ValueError(
                    f"Predict.out_data[{index}]: {dataset.store!s} has a "
                    f"neighborhood of {len(dataset.neighborhood or [])} offsets, but "
                    f"the network's output {index} has {channels} channels "
                    "(checkpoint.out_channels)"
                )

    def _check_context(self) -> None:
        if self.context_override is None:
            return
        low, high = self.context_override
        expected = self.checkpoint.eval_input_shape - self.checkpoint.eval_output_shape
        if low.dims != expected.dims or low + high != expected:
            raise ValueError(
                f"Predict.context_override {tuple(low)} + {tuple(high)} must add up "
                f"to the network's input minus output shape {tuple(expected)} "
                "(voxels)"
            )

    def _check_network(self, array: Array, out_channels: list[int]) -> None:
        """Run the network once on zeros of its smallest input and compare
        what it returns with the checkpoint's description."""
        torch = import_torch()
        shape = (1, network_channels(array), *self.checkpoint.min_input_shape)
        network = self.checkpoint.model().eval()
        zeros = np.zeros(shape, dtype=array.dtype)
        try:
            outputs = run_network(torch, network, zeros, "cpu")
        except Exception as e:
            raise ValueError(
                f"Predict.checkpoint: the network fails on an input of shape {shape} "
                f"and dtype {array.dtype} (checkpoint.in_channels and "
                f"min_input_shape, in_data's dtype): {type(e).__name__}: {e}"
            ) from e
        check_outputs(
            outputs,
            out_channels,
            self.checkpoint.min_output_shape,
            "checkpoint.min_output_shape",
        )

    # ------------------------------------------------------------- running

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare the output arrays (volara-torch's name; `init` does it
        before a run)."""
        template = self.in_data.array("r")
        chunk = self.checkpoint.eval_output_shape
        out_channels = self._out_channels(network_channels(template))
        for dataset, channels in zip(self.out_data, out_channels, strict=True):
            if dataset is None:
                continue
            prepare_like(
                dataset,
                template,
                self.write_roi,
                chunk,
                np.uint8,
                channels=[channels],
                channel_names=[f"{dataset.name}^"],
                channel_types=[dataset.name],
            )

    @contextmanager
    def process_block_func(self) -> Iterator:
        torch = import_torch()
        device = select_device(torch)
        if device == "cpu":
            share_cpu_cores(torch, self.num_workers)
        network = self.checkpoint.model().eval().to(device)
        in_array = self.in_data.array("r")
        out_arrays = [
            None if dataset is None else dataset.array("r+")
            for dataset in self.out_data
        ]
        out_channels = self._out_channels(network_channels(in_array))
        output_shape = self.checkpoint.eval_output_shape
        network_lock = threading.Lock()
        logger.info("Predict: running %s on %s", self.checkpoint.save_path, device)

        def process_block(block) -> None:
            data = read_region(in_array, block.read_roi)
            batch = as_network_input(data, in_array.channel_dims)
            # one block on the device at a time; the other cache workers
            # read and write meanwhile
            with network_lock:
                outputs = run_network(torch, network, batch, device)
            check_outputs(
                outputs,
                out_channels,
                output_shape,
                "checkpoint.min_output_shape + pred_size_growth",
            )
            for output, array in zip(outputs, out_arrays, strict=False):
                if array is not None:
                    self.write_output(array, block.write_roi, output[0])

        yield process_block

    def write_output(self, array: Array, write_roi: Roi, output: np.ndarray) -> None:
        """Store one output of a block (channels first, covering
        ``write_roi``) as uint8, cut to the array."""
        inside = write_roi.intersect(array.roi)
        begin = (inside.offset - write_roi.offset) / array.voxel_size
        end = begin + inside.shape / array.voxel_size
        crop = output[(slice(None), *map(slice, begin, end))]
        write_region(array, inside, self.stored_values(crop))

    def stored_values(self, output: np.ndarray) -> np.ndarray:
        """What is stored for network outputs: uint8, `TorchModel.out_range`
        mapped to 0..255."""
        return self.checkpoint.to_uint8(output)


def network_channels(array: Array) -> int:
    """Channels of ``array`` as the network sees them: the last channel
    axis (a first one is the batch), 1 without channel axes."""
    return 1 if array.channel_dims == 0 else int(array.shape[array.channel_dims - 1])


def select_device(torch: Any) -> str:
    """``cuda:<daisy worker id % number of GPUs>``, or ``"cpu"`` without a
    GPU (worker id 0 outside a daisy worker)."""
    gpus = torch.cuda.device_count()
    if gpus == 0:
        return "cpu"
    return f"cuda:{daisy_worker_id() % gpus}"


def daisy_worker_id() -> int:
    """This daisy worker's id; 0 outside a daisy worker."""
    import daisy

    if daisy.Context.ENV_VARIABLE not in os.environ:
        return 0
    return max(0, int(daisy.Context.from_env()["worker_id"]))


def share_cpu_cores(torch: Any, num_workers: int) -> None:
    """Give each of ``num_workers`` CPU workers its share of the cores, so
    that their thread pools do not fight over them."""
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // max(1, num_workers)))


def as_network_input(data: np.ndarray, channel_dims: int) -> np.ndarray:
    """``data`` with the batch and channel axes the network expects:
    ``(z, y, x)`` becomes ``(1, 1, z, y, x)``, ``(c, z, y, x)`` becomes
    ``(1, c, z, y, x)``."""
    for _ in range(2 - channel_dims):
        data = data[np.newaxis]
    return data


_grad_free: dict[str, Any] = {}


def run_network(torch: Any, network: Any, batch: np.ndarray, device: str) -> list:
    """The network's outputs for ``batch`` as numpy arrays (a list, one per
    output), computed without autograd."""
    tensor = torch.as_tensor(np.ascontiguousarray(batch), device=device)
    mode = _grad_free.get("mode", torch.inference_mode)
    try:
        with mode():
            result = network(tensor)
    except RuntimeError as e:
        # inference tensors cannot enter some custom autograd code: fall
        # back to no_grad for the rest of this process
        if mode is torch.no_grad or "nference" not in str(e):
            raise
        _grad_free["mode"] = torch.no_grad
        with torch.no_grad():
            result = network(tensor)
    outputs = list(result) if isinstance(result, tuple | list) else [result]
    return [output.detach().cpu().numpy() for output in outputs]


def check_outputs(
    outputs: list[np.ndarray],
    channels: Sequence[int],
    spatial_shape: Coordinate,
    shape_field: str,
) -> None:
    """Make sure the network returned one ``(1, channels, *spatial_shape)``
    array per output, naming the checkpoint field that is wrong."""
    if len(outputs) != len(channels):
        raise ValueError(
            f"Predict.checkpoint.out_channels describes {len(channels)} output(s), "
            f"the network returns {len(outputs)}"
        )
    for index, (output, expected) in enumerate(zip(outputs, channels, strict=True)):
        if output.ndim != 2 + spatial_shape.dims or output.shape[0] != 1:
            raise ValueError(
                f"Predict.checkpoint: the network's output {index} has shape "
                f"{output.shape}; expected (1, channels, "
                f"{', '.join(map(str, spatial_shape))})"
            )
        if output.shape[1] != expected:
            raise ValueError(
                f"Predict.checkpoint.out_channels: the network's output {index} has "
                f"{output.shape[1]} channels, the checkpoint says {expected}"
            )
        if tuple(output.shape[2:]) != tuple(spatial_shape):
            raise ValueError(
                f"Predict.{shape_field}: the network's output {index} is "
                f"{tuple(output.shape[2:])} voxels, the checkpoint says "
                f"{tuple(spatial_shape)}"
            )
