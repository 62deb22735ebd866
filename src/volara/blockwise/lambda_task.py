"""LambdaTask: your own function, run block by block over a volume."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pydantic import field_validator

from ..datasets import AnyDataset, Dataset
from ..utils import PydanticCallable, PydanticCoordinate
from .blockwise import BlockwiseTask

CALLS = {
    "array": "lambda_func(data) -> result",
    "block": "lambda_func(block, in_data=..., out_data=...)",
}


def _dtype_name(value: Any) -> str:
    """The name of a numpy data type ("uint8"), from anything numpy reads as
    one (a name, a numpy type, a dtype)."""
    try:
        if value is None:
            raise TypeError
        dtype = np.dtype(value)
    except TypeError:
        raise ValueError(
            f"{value!r} is not a numpy data type; use e.g. 'uint8' or 'float32'"
        ) from None
    # the readable name where it reads back as the same type
    try:
        return dtype.name if np.dtype(dtype.name) == dtype else dtype.str
    except TypeError:
        return dtype.str


class LambdaTask(BlockwiseTask):
    """Apply a function of yours to ``in_data`` block by block and write the
    results to ``out_data``.

    By default (``call_style="array"``, as in volara 1) the function maps a
    block's voxels to output voxels; with ``call_style="block"`` it receives
    the block and the opened arrays and reads and writes itself."""

    task_type: Literal["lambda"] = "lambda"
    in_data: AnyDataset
    """The input array; its grid (voxel size, offset) is the output's."""
    out_data: AnyDataset
    """The output array. Prepared before any block runs from ``in_data`` as
    template: same voxel size, axis names and units, covering the region
    processed, chunked by ``block_size``, with ``in_data``'s channel axes and
    data type unless ``out_channels`` or ``out_array_dtype`` say otherwise.
    See ``init_out`` to write into an existing array instead."""
    lambda_func: PydanticCallable
    """Your function, called once per block as ``call_style`` describes.

    Give a Python function (a lambda too), or in a config either
    ``"package.module:function"`` (imported by name on every worker, which
    must have the package installed) or a base64-encoded cloudpickle of a
    function (how volara 1 saved functions, and how a Python function given
    here is saved). **Loading a pickled function executes code: only load
    configs you trust.** Functions from a script, a notebook or a lambda are
    pickled with their code; workers need the same Python version and
    packages to load them."""
    call_style: Literal["array", "block"] = "array"
    """How ``lambda_func`` is called for each block:

    - ``"array"``: ``result = lambda_func(data)``. ``data`` is the numpy
      array of ``in_data`` over the block grown by ``context``, clipped to
      ``in_data``'s extent, channel axes first. ``result`` has
      ``out_data``'s channel axes and the spatial shape of ``data``; the
      block's own region is cut out of it and written.
    - ``"block"``: ``lambda_func(block, in_data=..., out_data=...)`` with
      the daisy block (``block.write_roi``: the region to write;
      ``block.read_roi``: that grown by ``context``; in world units) and
      both arrays opened as `funlib.persistence.Array` (indexed by ROIs in
      world units; ``out_data`` writable). The function reads and writes
      itself; what it returns is ignored."""
    context: PydanticCoordinate | None = None
    """Voxels read around each block on every side, one value per spatial
    axis, e.g. the radius of a filter so that blocks show no seams.
    ``None``: no context."""
    out_array_dtype: str | None = None
    """The output's data type, e.g. ``"uint8"`` or ``"float32"``.
    ``None``: that of ``in_data``."""
    out_channels: list[int] | None = None
    """Sizes of the output's channel axes, e.g. ``[3]``, or ``[]`` for none.
    ``None``: those of ``in_data``."""
    init_out: bool = True
    """``True``: prepare ``out_data`` over the region processed (the extent
    of ``in_data``, cut to ``roi``). ``False``: ``out_data`` exists already
    (e.g. a larger volume of which this task rewrites the part ``in_data``
    covers); nothing is prepared or dropped, blocks tile ``out_data`` (cut to
    ``roi``) and blocks outside ``in_data`` are skipped."""
    task_name_suffix: str | None = None
    """Appended to the task name (``<out_data name>-lambda-<suffix>``) to
    keep the logs and block tracking of several runs writing one
    ``out_data`` apart, e.g. when patching several windows with
    ``init_out=False``."""
    block_size: PydanticCoordinate | None = None
    """Size of the region each block writes, in voxels, one value per
    spatial axis. ``None``: the chunk shape of ``out_data`` if it exists,
    else that of ``in_data``."""
    fit: str = "shrink"
    read_write_conflict: bool = False

    @field_validator("out_array_dtype", mode="before")
    @classmethod
    def _known_dtype(cls, value: Any) -> str | None:
        return None if value is None else _dtype_name(value)

    @field_validator("out_channels")
    @classmethod
    def _positive_channels(cls, channels: list[int] | None) -> list[int] | None:
        if channels is not None and any(size < 1 for size in channels):
            raise ValueError(
                f"out_channels {channels}: every channel axis needs a size of at "
                "least 1 (use [] for no channel axes)"
            )
        return channels

    @field_validator("task_name_suffix")
    @classmethod
    def _plain_suffix(cls, suffix: str | None) -> str | None:
        if suffix is not None and (not suffix or "/" in suffix or "\\" in suffix):
            raise ValueError(
                f"task_name_suffix {suffix!r} names a directory: use a non-empty "
                "name without slashes"
            )
        return suffix

    @property
    def task_name(self) -> str:
        name = f"{self.out_data.name}-{self.task_type}"
        if self.task_name_suffix is not None:
            name = f"{name}-{self.task_name_suffix}"
        return name

    # ------------------------------------------------------------- geometry

    @property
    def grid_dataset(self) -> Dataset:
        """The array whose grid and extent the blocks tile."""
        return self.in_data if self.init_out else self.out_data

    @property
    def voxel_size(self) -> Coordinate:
        return self.grid_dataset.array("r").voxel_size

    @property
    def write_roi(self) -> Roi:
        array = self.grid_dataset.array("r")
        total = array.roi
        if self.roi is not None:
            total = total.intersect(self.roi).snap_to_grid(
                array.voxel_size, mode="shrink"
            )
        return total

    @property
    def block_size_voxels(self) -> Coordinate:
        """``block_size``, or the chunk shape it defaults to."""
        if self.block_size is not None:
            return self.block_size
        dataset = self.out_data if self.out_data.exists() else self.in_data
        array = dataset.array("r")
        return Coordinate(array.chunk_shape[-array.voxel_size.dims :])

    @property
    def write_size(self) -> Coordinate:
        return self.block_size_voxels * self.voxel_size

    @property
    def context_voxels(self) -> Coordinate:
        if self.context is not None:
            return self.context
        return Coordinate((0,) * self.voxel_size.dims)

    @property
    def context_size(self) -> Coordinate:
        return self.context_voxels * self.voxel_size

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_data]

    @property
    def out_dtype(self) -> np.dtype:
        if self.out_array_dtype is not None:
            return np.dtype(self.out_array_dtype)
        return self.in_data.array("r").dtype

    # --------------------------------------------------------------- checks

    def check_config(self) -> None:
        if not self.init_out and not self.out_data.exists():
            raise ValueError(
                f"LambdaTask.out_data: init_out is False, so {self.out_data.store!s} "
                "must exist already, and it does not. Set init_out=True to create it"
            )
        source = self.in_data.array("r")
        spatial_dims = source.voxel_size.dims
        for field in ("block_size", "context"):
            value = getattr(self, field)
            if value is not None and value.dims != spatial_dims:
                raise ValueError(
                    f"LambdaTask.{field} {tuple(value)} has {value.dims} values; "
                    f"{self.in_data.store!s} has {spatial_dims} spatial axes"
                )
        if self.roi is not None and self.roi.dims != spatial_dims:
            raise ValueError(
                f"LambdaTask.roi has {self.roi.dims} dimensions; the data has "
                f"{spatial_dims}"
            )
        if not self.init_out:
            target = self.out_data.array("r")
            if target.voxel_size != source.voxel_size:
                raise ValueError(
                    f"LambdaTask.out_data: voxel size {tuple(target.voxel_size)} of "
                    f"{self.out_data.store!s} differs from "
                    f"{tuple(source.voxel_size)} of {self.in_data.store!s}"
                )
        self._check_call_signature()

    def _check_call_signature(self) -> None:
        try:
            signature = inspect.signature(self.lambda_func)
        except (TypeError, ValueError):
            return  # e.g. a numpy ufunc: nothing to check before it is called
        try:
            if self.call_style == "block":
                signature.bind(None, in_data=None, out_data=None)
            else:
                signature.bind(None)
        except TypeError as e:
            raise ValueError(
                f"LambdaTask.lambda_func: with call_style={self.call_style!r} it is "
                f"called as {CALLS[self.call_style]}, which its parameters "
                f"{signature} do not accept ({e})"
            ) from None

    # -------------------------------------------------------------- outputs

    def init(self) -> None:
        if self.init_out:
            self._prepare_output()

    def init_out_array(self) -> None:
        """Prepare ``out_data`` (volara 1.0.5's name; `init` calls it when
        ``init_out`` is set)."""
        self._prepare_output()

    def _prepare_output(self) -> None:
        template = self.in_data.array("r")
        channel_dims, voxel_size = template.channel_dims, template.voxel_size
        in_channels = list(template.shape[:channel_dims])
        channels = in_channels if self.out_channels is None else self.out_channels
        if channels == in_channels:
            channel_names = list(template.axis_names[:channel_dims])
            channel_types = list(template.types[:channel_dims])
        else:
            channel_names = [f"c{i}^" for i in range(len(channels))]
            channel_types = ["channel"] * len(channels)
        self.out_data.prepare(
            shape=(*channels, *(self.write_roi.shape / voxel_size)),
            chunk_shape=(*channels, *self.block_size_voxels),
            offset=self.write_roi.offset,
            voxel_size=voxel_size,
            units=list(template.units),
            axis_names=[*channel_names, *template.axis_names[channel_dims:]],
            types=[*channel_types, *template.types[channel_dims:]],
            dtype=self.out_dtype,
        )

    def drop_artifacts(self) -> None:
        if self.init_out:
            self.out_data.drop()

    # --------------------------------------------------------------- blocks

    @contextmanager
    def process_block_func(self) -> Iterator:
        source = self.in_data.array("r")
        target = self.out_data.array("r+")
        function = self.lambda_func
        if self.call_style == "block":

            def process_block(block) -> None:
                if _overlap(block.write_roi, source, target).empty:
                    return
                function(block, in_data=source, out_data=target)

        else:

            def process_block(block) -> None:
                write_roi = _overlap(block.write_roi, source, target)
                if write_roi.empty:
                    return
                read_roi = block.read_roi.intersect(source.roi)
                data = source.to_ndarray(read_roi)
                result = _checked_result(function(data), data, target)
                crop = Array(result, read_roi.offset, source.voxel_size)[write_roi]
                target[write_roi] = crop

        yield process_block


def _overlap(write_roi: Roi, source: Array, target: Array) -> Roi:
    """The part of a block that both arrays cover (blocks outside the input
    are skipped when writing into an existing, larger output)."""
    return write_roi.intersect(source.roi).intersect(target.roi)


def _checked_result(result: Any, data: np.ndarray, target: Array) -> np.ndarray:
    result = np.asarray(result)
    spatial_dims = target.voxel_size.dims
    spatial_shape = data.shape[data.ndim - spatial_dims :]
    channel_shape = tuple(target.shape[: target.channel_dims])
    expected = (*channel_shape, *spatial_shape)
    if result.shape != expected:
        raise ValueError(
            f"LambdaTask.lambda_func returned shape {result.shape} for input of "
            f"shape {data.shape}; out_data needs {expected} (its channel axes, "
            "then the input's spatial shape). Set out_channels if the function "
            "changes the channels"
        )
    return result
