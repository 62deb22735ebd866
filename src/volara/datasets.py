"""Zarr datasets as configs: where an array lives and how to read it.

A dataset model is only a description (a path and optional metadata
overrides); `Dataset.array` opens it as a `funlib.persistence.Array`, indexed
by `Roi` in world units. The subclasses say what the array holds, which
decides the attributes written next to it (`Affs` writes its neighborhood) and
the lazy operations applied on reading (every dataset selects `channels`;
`Raw` also normalizes and stacks).

A store is a local path or an ``s3://`` url, read and written through zarr's
fsspec store and s3fs with the dataset's ``s3_kwargs`` (see `volara.stores`).
The exception is `CloudVolumeWrapper`: a neuroglancer precomputed volume, read
only, through CloudVolume (see `volara.precomputed`).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds, prepare_ds
from pydantic import Field, StrictInt, field_validator
from zarr.storage import LocalStore

from . import precomputed, stores
from .utils import OpenMode, PydanticCoordinate, StrictBaseModel

logger = logging.getLogger(__name__)

ChannelSelection = StrictInt | list[StrictInt | list[StrictInt]]
"""What `Dataset.channels` accepts: an index, or a list of indices and index
lists (see the field's documentation)."""


class Dataset(StrictBaseModel, ABC):
    """A zarr array used as the input or output of a task.

    The metadata fields override what is stored with the array; leave them
    unset to use the array's own metadata.
    """

    store: Path | str
    """Where the zarr array is: a local path, e.g. ``data.zarr/raw``, or an
    S3 url, e.g. ``s3://bucket/data.zarr/raw`` (needs ``pip install
    "volara[s3]"``; endpoint and credentials in `s3_kwargs`)."""
    voxel_size: PydanticCoordinate | None = None
    """Size of one voxel in world units (e.g. nm), one value per spatial axis.
    Overrides the array's metadata."""
    offset: PydanticCoordinate | None = None
    """World coordinate of the first voxel, one value per spatial axis.
    Overrides the array's metadata."""
    axis_names: list[str] | None = None
    """Names of all axes (channel axes end in ``^`` by convention)."""
    units: list[str] | None = None
    """Unit of each spatial axis, e.g. ``["nm", "nm", "nm"]``."""
    writable: bool = True
    """Whether a task may create or write this array. Set it to False to
    protect an input: a task that would write it is refused before any block
    runs."""
    channels: ChannelSelection | None = None
    """Which part of the leading (channel) axes to read; ``None`` reads all.

    - a list of integers, e.g. ``[2, 0]``: those channels of the first axis,
      in this order; the axis stays. (volara 1.0.5 read a flat list as one
      index per leading axis, dropping each: ``[0, 2]`` was channel 2 of
      time point 0. volara 2 keeps the selecting meaning; ``[0, [2]]`` reads
      that channel, leaving an axis of length 1.)
    - an integer, e.g. ``0``: that channel; the axis is dropped
      (``[C, Z, Y, X]`` becomes ``[Z, Y, X]``).
    - a list holding at least one list, e.g. ``[0, [0, 2, 4]]``: steps
      applied one after another as in volara 1.0.5, each to the first axis
      the previous steps left; an integer picks one entry and drops the axis,
      a list picks entries along it (``[T, C, Z, Y, X]`` becomes
      ``[3, Z, Y, X]``: time point 0, then channels 0, 2 and 4).
      ``[[0, 2]]`` selects channels 0 and 2 and keeps the axis.

    A selection that only picks channels (a list of integers, or ``[[...]]``)
    leaves the array writable. The 1.0.5 forms (an integer, or a list with a
    list in it) apply after `Raw`'s normalization and `stack`, as in 1.0.5;
    a list of integers applies before them."""
    zarr_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for zarr when the array is opened or created
    (e.g. ``{"compressors": ...}``); passed through funlib.persistence."""
    s3_kwargs: dict[str, Any] | None = None
    """How to reach an ``s3://`` store: options of ``s3fs.S3FileSystem``, e.g.
    ``{"key": ..., "secret": ..., "endpoint_url": "http://host:8333"}`` for
    an S3-compatible server (boto3's ``aws_access_key_id``,
    ``aws_secret_access_key`` and ``region_name`` work too). ``None``:
    credentials and endpoint from the environment (``AWS_ACCESS_KEY_ID``,
    ``~/.aws``, ...). Unused for local stores."""

    @field_validator("channels")
    @classmethod
    def _check_channels(
        cls, channels: int | list[int | list[int]] | None
    ) -> int | list[int | list[int]] | None:
        if isinstance(channels, list) and (
            not channels or any(step == [] for step in channels)
        ):
            raise ValueError(
                f"channels {channels!r} selects nothing: give channel indices, e.g. "
                "[0, 2], or leave channels unset to read every channel"
            )
        return channels

    @property
    def selects_listed_channels(self) -> bool:
        """Whether `channels` is a plain list of channel indices (volara 2's
        meaning), applied before any other lazy operation."""
        return isinstance(self.channels, list) and all(
            isinstance(c, int) for c in self.channels
        )

    def _channel_steps(self) -> list[tuple[int | list[int]]]:
        """`channels` as index expressions, applied one after another."""
        channels = self.channels
        if channels is None:
            return []
        if isinstance(channels, int):
            return [(channels,)]
        if self.selects_listed_channels:
            return [(list(channels),)]  # type: ignore[arg-type]
        # one native index per step: funlib keeps slices and integer lists
        # writable, which callables would not be
        return [(step if isinstance(step, int) else list(step),) for step in channels]

    @field_validator("store", mode="wrap")
    @classmethod
    def _store_as_path(cls, store: Any, handler: Any) -> Path | str:
        # JSON cannot tell a str from a Path: one type keeps configs equal
        # after a round trip through a file. A url stays a string.
        return stores.validate_location(store, handler, "store")

    @property
    def name(self) -> str:
        """The last component of the store path. Task names are built from it,
        so two runs writing differently named datasets keep separate logs and
        block tracking."""
        return PurePosixPath(str(self.store).split("://", 1)[-1].rstrip("/")).name

    @property
    def is_remote(self) -> bool:
        """Whether the store is a url (``s3://...``) rather than a local path."""
        return stores.is_url(self.store)

    def _zarr_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for zarr: `zarr_kwargs`, and for a url the
        filesystem options (`s3_kwargs`)."""
        if not isinstance(self.store, str):
            return dict(self.zarr_kwargs)
        options = stores.storage_options(self.store, self.s3_kwargs)
        return {**self.zarr_kwargs, "storage_options": options}

    def check_reachable(self, what: str | None = None) -> None:
        """For a url: raise a clear error, within seconds, if its server does
        not answer (`ConnectionError`), refuses the credentials
        (`PermissionError`) or has no such bucket (`FileNotFoundError`).
        ``what`` names the dataset in the message (default
        ``<class>.store``). Does nothing for a local store."""
        if isinstance(self.store, str):
            what = what or f"{type(self).__name__}.store"
            stores.check_reachable(self.store, self.s3_kwargs, what)

    def zarr_array(self, mode: OpenMode = "r") -> zarr.Array:
        """The zarr array itself, without metadata overrides or lazy ops."""
        self.check_reachable()
        return zarr.open_array(str(self.store), mode=mode, **self._zarr_kwargs())

    @property
    @abstractmethod
    def attrs(self) -> dict[str, Any]:
        """Attributes written into the zarr array's metadata on `prepare`."""

    def exists(self) -> bool:
        """Whether a zarr array is stored at `store`. For a url, an
        unreachable server or refused credentials are errors, not ``False``."""
        self.check_reachable()
        try:
            opened = zarr.open(str(self.store), mode="r", **self._zarr_kwargs())
            return isinstance(opened, zarr.Array)
        except (FileNotFoundError, zarr.errors.NodeTypeValidationError):
            return False
        except Exception:
            return False

    def array(self, mode: OpenMode = "r") -> Array:
        """Open the array, with this model's metadata overrides and lazy ops."""
        overrides: dict[str, Any] = {
            "voxel_size": self.voxel_size,
            "offset": self.offset,
            "axis_names": self.axis_names,
            "units": self.units,
        }
        if mode != "r":
            self.check_writable()
        self.check_reachable()
        try:
            array = open_ds(
                str(self.store),
                mode=mode,
                **{k: v for k, v in overrides.items() if v is not None},
                **self._zarr_kwargs(),
            )
        except (FileNotFoundError, TypeError) as e:
            raise FileNotFoundError(
                f"{type(self).__name__}.store: no zarr array at {self.store!s}. "
                "Check the path, or run the task that writes it first."
            ) from e
        self._apply_lazy_ops(array)
        return array

    def _apply_lazy_ops(self, array: Array) -> None:
        """Select `channels`; subclasses add their own operations (`Raw`:
        normalization, stacking)."""
        for step in self._channel_steps():
            self._select_channels(array, step)

    def _select_channels(self, array: Array, step: tuple[int | list[int]]) -> None:
        shape = array.shape
        try:
            array.lazy_op(step)
        except IndexError as e:
            raise ValueError(
                f"{type(self).__name__}.channels: {self.channels!r} does not fit "
                f"{self.store!s}: index {step[0]!r} is out of range for an axis "
                f"of length {shape[0]} (the array reads as shape {tuple(shape)} "
                "at that step). Give indices within range, or leave channels unset."
            ) from e

    def prepare(
        self,
        shape: Sequence[int],
        chunk_shape: Sequence[int],
        offset: Sequence[int],
        voxel_size: Sequence[int],
        units: Sequence[str] | None,
        axis_names: Sequence[str] | None,
        types: Sequence[str] | None,
        dtype: Any,
    ) -> None:
        """Create the array, or reuse an existing one with the same layout.

        ``shape`` and ``chunk_shape`` are in voxels and include channel axes;
        ``offset`` and ``voxel_size`` are in world units, spatial axes only.
        An existing array with a different shape, chunking, dtype, offset or
        voxel size is an error listing each difference; it is never
        overwritten (call `drop` first to start over).
        """
        self.check_writable()
        shape = tuple(int(s) for s in shape)
        chunk_shape = tuple(int(c) for c in chunk_shape)
        offset = Coordinate(offset)
        voxel_size = Coordinate(voxel_size)
        dtype = np.dtype(dtype)
        mode: OpenMode
        if self.exists():
            self._check_compatible(shape, chunk_shape, offset, voxel_size, dtype)
            mode = "r+"
        else:
            mode = "w"
        try:
            array = prepare_ds(
                str(self.store),
                shape=shape,
                offset=offset,
                voxel_size=voxel_size,
                axis_names=list(axis_names) if axis_names is not None else None,
                units=list(units) if units is not None else None,
                types=list(types) if types is not None else None,
                chunk_shape=chunk_shape,
                dtype=dtype,
                mode=mode,
                **self._zarr_kwargs(),
            )
        except PermissionError as e:
            raise PermissionError(
                f"{type(self).__name__}.store: cannot write {self.store!s} "
                f"({e}). Choose a writable location."
            ) from e
        except OSError as e:
            raise OSError(
                f"{type(self).__name__}.store: cannot create {self.store!s} "
                f"({e}). Choose a writable location."
            ) from e
        if self.attrs:
            array._source_data.attrs.update(_jsonable(self.attrs))

    def check_writable(self) -> None:
        """Raise if `writable` is False (a task is about to write this array)."""
        if not self.writable:
            raise PermissionError(
                f"{type(self).__name__}.writable is False for {self.store!s}, but a "
                "task would write it. Write to another store, or set writable=True."
            )

    def _check_compatible(
        self,
        shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        offset: Coordinate,
        voxel_size: Coordinate,
        dtype: np.dtype,
    ) -> None:
        existing = open_ds(str(self.store), mode="r", **self._zarr_kwargs())
        differences = [
            f"{what}: given {given}, found {found}"
            for what, given, found in [
                ("shape (voxels)", shape, tuple(existing.shape)),
                (
                    "chunk shape (voxels)",
                    chunk_shape,
                    tuple(existing._source_data.chunks),
                ),
                ("dtype", dtype, existing.dtype),
                ("offset (world units)", tuple(offset), tuple(existing.offset)),
                (
                    "voxel size (world units)",
                    tuple(voxel_size),
                    tuple(existing.voxel_size),
                ),
            ]
            if given != found
        ]
        if differences:
            raise ValueError(
                f"{type(self).__name__}.store: the existing array at {self.store!s} "
                "does not match what this task would write:\n  "
                + "\n  ".join(differences)
                + "\nDelete it (dataset.drop() or task.drop(drop_outputs=True)) "
                "or write to another store."
            )

    def drop(self) -> None:
        """Delete the array (from disk, or every object under the url). Does
        nothing if it does not exist."""
        if isinstance(self.store, str):
            self._drop_remote(self.store)
            return
        path = Path(self.store)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def _drop_remote(self, url: str) -> None:
        self.check_reachable()
        filesystem = stores.filesystem(
            url, self.s3_kwargs, f"{type(self).__name__}.store"
        )
        if filesystem.exists(url):
            filesystem.rm(url, recursive=True)
        filesystem.invalidate_cache(url)


CHUNK_CACHE_BYTES = int(os.environ.get("VOLARA_CHUNK_CACHE_MB", "256")) * 2**20
"""How many bytes of decoded chunks a block worker keeps per input array
(`ChunkCache`); ``VOLARA_CHUNK_CACHE_MB=0`` keeps none."""


class ChunkCache:
    """Decoded chunks of one zarr array, kept by a block worker from block
    to block (the least recently used go first past `max_bytes`).

    Blocks read with context overlap their neighbours' read regions, and a
    chunk is decoded whole for every block that touches it: on the
    yardstick each block decodes 9 to 16 chunks of 8.8 MB for a region of
    37 MB. Only for arrays that nothing writes while the worker runs (the
    inputs of a task that no earlier task of its pipeline writes): a kept
    chunk is never read again."""

    def __init__(self, max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.decoded = 0
        """Chunks decoded so far (the rest came from the cache)."""
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def read(
        self, source: zarr.Array, begin: Sequence[int], end: Sequence[int]
    ) -> np.ndarray:
        """``source[begin:end]`` (every axis, within the array), assembled
        from its chunks."""
        data = np.empty(np.subtract(end, begin), dtype=source.dtype)
        chunk_shape = source.chunks
        ranges = [
            range(b // c, (e - 1) // c + 1)
            for b, e, c in zip(begin, end, chunk_shape, strict=True)
        ]
        for index in itertools.product(*ranges):
            first = [i * c for i, c in zip(index, chunk_shape, strict=True)]
            chunk = self._chunk(source, index, first)
            low = np.maximum(begin, first)
            high = np.minimum(end, np.add(first, chunk.shape))
            data[tuple(map(slice, low - begin, high - begin))] = chunk[
                tuple(map(slice, low - first, high - first))
            ]
        return data

    def _chunk(
        self, source: zarr.Array, index: tuple[int, ...], first: list[int]
    ) -> np.ndarray:
        chunk = self._chunks.get(index)
        if chunk is not None:
            self._chunks.move_to_end(index)
            return chunk
        last = np.minimum(np.add(first, source.chunks), source.shape)
        with _chunks_in_turn(source):
            chunk = np.asarray(source[tuple(map(slice, first, last))])
        self.decoded += 1
        if chunk.nbytes <= self.max_bytes:
            self._chunks[index] = chunk
            self.nbytes += chunk.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._chunks.popitem(last=False)
                self.nbytes -= dropped.nbytes
        return chunk


def chunk_cache_for(array: Array) -> ChunkCache | None:
    """A `ChunkCache` for ``array`` if `read_region` can use one (a plain
    zarr array on a local disk, and a cache size above 0), else None. A
    remote store is read as zarr reads it, many chunks at once: the cache
    asks for its chunks one after the other, a round trip each."""
    source = _plain_zarr(array)
    if CHUNK_CACHE_BYTES <= 0 or source is None:
        return None
    if not isinstance(source.store_path.store, LocalStore):
        return None
    return ChunkCache()


def read_region(
    array: Array, roi: Roi, fill_value: Any = 0, cache: ChunkCache | None = None
) -> np.ndarray:
    """The voxels of ``array`` in ``roi`` (world units, a multiple of the
    voxel size), channel axes included, with ``fill_value`` where ``roi``
    sticks out of the array: what ``array.to_ndarray(roi, fill_value)``
    returns.

    Block functions read this way. An array without lazy operations is read
    from its zarr array directly: funlib reads through dask, whose graph of
    chunk tasks costs more than the read itself for a block of a few
    chunks. Arrays with lazy operations (channel selection, normalization)
    are read through funlib, which applies them. ``cache`` (see
    `chunk_cache_for`) keeps the decoded chunks of an array that does not
    change for the next blocks.
    """
    source = _plain_zarr(array)
    if source is None:
        return array.to_ndarray(roi, fill_value=fill_value)
    channels, begin, end = _voxel_bounds(array, source, roi)
    extent = source.shape[len(channels) :]
    if _within(begin, end, extent):
        return _read_within(source, channels, begin, end, cache)
    data = np.full(
        (*source.shape[: len(channels)], *np.subtract(end, begin)),
        fill_value,
        dtype=source.dtype,
    )
    low, high = np.maximum(begin, 0), np.minimum(end, extent)
    if np.all(high > low):
        inside = map(slice, low - begin, high - begin)
        data[(*channels, *inside)] = _read_within(
            source, channels, low.tolist(), high.tolist(), cache
        )
    return data


def _read_within(
    source: zarr.Array,
    channels: tuple[slice, ...],
    begin: Sequence[int],
    end: Sequence[int],
    cache: ChunkCache | None,
) -> np.ndarray:
    """Every channel of ``source`` from ``begin`` to ``end`` (spatial
    voxel indices inside the array)."""
    if cache is not None:
        everything = [0] * len(channels), list(source.shape[: len(channels)])
        return cache.read(source, [*everything[0], *begin], [*everything[1], *end])
    with _chunks_in_turn(source):
        return np.asarray(source[(*channels, *map(slice, begin, end))])


def write_region(array: Array, roi: Roi, data: np.ndarray) -> None:
    """Write ``data`` into ``array`` at ``roi`` (world units): what
    ``array[roi] = data`` does, straight into the zarr array when it has no
    lazy operations (funlib's indexing arithmetic costs about as much as
    writing a small block)."""
    source = _plain_zarr(array)
    if source is not None:
        channels, begin, end = _voxel_bounds(array, source, roi)
        if _within(begin, end, source.shape[len(channels) :]):
            with _chunks_in_turn(source):
                source[(*channels, *map(slice, begin, end))] = data
            return
    # funlib applies lazy slices and reports a region outside the array
    array[roi] = data


def _chunks_in_turn(source: zarr.Array) -> Any:
    """Within: zarr reads and writes the chunks of ``source`` one after
    the other if it is on a local disk. By default zarr decodes up to ten
    chunks at once in threads; a block worker already has a core of its
    own, and there the threads cost more than they save (two workers
    reading yardstick blocks: 28% less time, 28% less CPU one chunk at a
    time). Remote stores keep their concurrency: there it hides latency."""
    if isinstance(source.store_path.store, LocalStore):
        # applied now, undone when the ``with`` ends
        return zarr.config.set({"async.concurrency": 1})
    return nullcontext()


def _plain_zarr(array: Array) -> zarr.Array | None:
    """The zarr array behind ``array`` if voxel indices map to it directly
    (no lazy operations, channel axes first), else None."""
    source = array._source_data
    if array.lazy_ops or not isinstance(source, zarr.Array):
        return None
    if any(t in ("space", "time") for t in array.types[: array.channel_dims]):
        return None
    return source


def _voxel_bounds(
    array: Array, source: zarr.Array, roi: Roi
) -> tuple[tuple[slice, ...], list[int], list[int]]:
    """Slices selecting every channel, and the begin and end of ``roi`` in
    voxel indices of the spatial axes. Plain integers: Roi arithmetic builds
    dozens of Coordinates per call, which shows at thousands of blocks per
    second."""
    channels = (slice(None),) * (len(source.shape) - roi.dims)
    offset, voxel_size = array.offset, array.voxel_size
    begin = [
        (b - o) // v for b, o, v in zip(roi.begin, offset, voxel_size, strict=True)
    ]
    end = [b + s // v for b, s, v in zip(begin, roi.shape, voxel_size, strict=True)]
    return channels, begin, end


def _within(begin: list[int], end: list[int], extent: tuple[int, ...]) -> bool:
    return all(0 <= b and e <= s for b, e, s in zip(begin, end, extent, strict=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | Coordinate):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Raw(Dataset):
    """Intensities (EM, fluorescence, probabilities), read as float32 when a
    normalization is set."""

    dataset_type: Literal["raw"] = "raw"
    ome_norm: Path | str | None = None
    """Path (or url, reached with `s3_kwargs`) of an OME-Zarr group whose
    ``omero`` metadata gives, per channel, a ``window`` with ``min`` and
    ``max``; intensities are mapped to ``(value - min) / (max - min)``."""
    scale_shift: tuple[float, float] | None = None
    """``(scale, shift)``: intensities are read as ``value * scale + shift``
    (float32), e.g. ``(1/255, 0)`` for uint8 data."""
    stack: AnyDataset | None = None
    """Another dataset of the same spatial shape whose channels are appended
    after this one's (after this dataset's own normalization, and its
    channel selection if that is a list of integers). A stacked dataset
    without a ``dataset_type`` (what volara 1.0.5's ``model_dump`` writes) is
    read as `Raw`."""

    @field_validator("stack", mode="before")
    @classmethod
    def _untagged_stack_is_raw(cls, stack: Any) -> Any:
        # volara 1.0.5 typed `stack` as the base class, so its dumps carry the
        # base fields only; reading those as Raw reads what 1.0.5 read
        if isinstance(stack, dict) and "dataset_type" not in stack:
            return {**stack, "dataset_type": "raw"}
        return stack

    @field_validator("ome_norm", mode="wrap")
    @classmethod
    def _ome_norm_as_path(cls, ome_norm: Any, handler: Any) -> Path | str | None:
        if ome_norm is None:
            return None
        return stores.validate_location(ome_norm, handler, "ome_norm")

    @property
    def attrs(self) -> dict[str, Any]:
        bounds = self.bounds
        return {"bounds": bounds} if bounds is not None else {}

    @property
    def bounds(self) -> list[tuple[float, float]] | None:
        """Per-channel ``(min, max)`` from the OMERO metadata of ``ome_norm``."""
        if self.ome_norm is None:
            return None
        options: dict[str, Any] = {}
        if isinstance(self.ome_norm, str):
            stores.check_reachable(self.ome_norm, self.s3_kwargs, "Raw.ome_norm")
            options["storage_options"] = stores.storage_options(
                self.ome_norm, self.s3_kwargs
            )
        group = zarr.open_group(str(self.ome_norm), mode="r", **options)
        try:
            # plain JSON metadata: any missing level is a KeyError/TypeError
            channels: Any = group.attrs["omero"]["channels"]  # type: ignore[index,call-overload]
            return [
                (float(c["window"]["min"]), float(c["window"]["max"])) for c in channels
            ]
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"Raw.ome_norm: {self.ome_norm!s} has no omero/channels/window "
                "metadata to normalize with"
            ) from e

    def _apply_lazy_ops(self, array: Array) -> None:
        steps = self._channel_steps()
        listed = self.selects_listed_channels
        if listed:
            self._select_channels(array, steps[0])
        bounds = self.bounds
        if bounds is not None:
            if listed:
                bounds = [bounds[c] for c in steps[0][0]]  # type: ignore[union-attr]
            array.lazy_op(_OmeNormalize(bounds))
        if self.scale_shift is not None:
            array.lazy_op(_ScaleShift(*self.scale_shift))
        if self.stack is not None:
            array.lazy_op(_StackWith(self.stack))
        if not listed:
            # volara 1.0.5's forms index the normalized, stacked array
            for step in steps:
                self._select_channels(array, step)


class _ScaleShift:
    def __init__(self, scale: float, shift: float):
        self.scale, self.shift = scale, shift

    def __call__(self, data):
        return data.astype(np.float32) * np.float32(self.scale) + np.float32(self.shift)


class _OmeNormalize:
    def __init__(self, bounds: list[tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, data):
        lows = np.array([b[0] for b in self.bounds], dtype=np.float32)
        spans = np.array([b[1] - b[0] for b in self.bounds], dtype=np.float32)
        expand = (slice(None),) + (None,) * (data.ndim - 1)
        return (data.astype(np.float32) - lows[expand]) / spans[expand]


class _StackWith:
    def __init__(self, other: Dataset):
        self.other = other

    def __call__(self, data):
        import dask.array as da

        other = self.other.array("r").data
        if other.ndim == data.ndim - 1:
            other = other[None]
        if data.ndim == other.ndim - 1:
            data = data[None]
        return da.concatenate([data, other.astype(data.dtype)], axis=0)


class Affs(Dataset):
    """Affinities: one channel per offset of the neighborhood, values in [0, 1]
    (or uint8 in [0, 255]). A channel's value at voxel ``x`` is the affinity
    between ``x`` and ``x + offset``."""

    dataset_type: Literal["affs"] = "affs"
    neighborhood: list[PydanticCoordinate] | None = None
    """The offsets of the affinity channels, in voxels, one per channel, e.g.
    ``[[1, 0, 0], [0, 1, 0], [0, 0, 1]]``. Read from the array's
    ``neighborhood`` attribute when not given; given and stored must agree.
    It describes the stored array: `channels` does not narrow it (as in
    volara 1.0.5), so tasks that pair channels with offsets need a
    selection that keeps every offset (e.g. dropping a leading time axis)."""

    @field_validator("neighborhood")
    @classmethod
    def _non_empty(cls, value):
        if value is not None and len(value) == 0:
            raise ValueError("neighborhood is empty: give at least one offset")
        if value is not None and len({c.dims for c in value}) > 1:
            raise ValueError(
                "neighborhood offsets differ in dimensions: "
                f"{[tuple(c) for c in value]}"
            )
        return value

    def model_post_init(self, context: Any) -> None:
        stored = self._stored_neighborhood()
        if self.neighborhood is None:
            if stored is None:
                raise ValueError(
                    f"Affs.neighborhood: not given, and {self.store!s} has no "
                    "'neighborhood' attribute to read it from. Pass "
                    "neighborhood=[[1, 0, 0], [0, 1, 0], [0, 0, 1], ...] (voxels)."
                )
            self.neighborhood = stored
        elif stored is not None and [tuple(c) for c in stored] != [
            tuple(c) for c in self.neighborhood
        ]:
            raise ValueError(
                f"Affs.neighborhood: given {[tuple(c) for c in self.neighborhood]} "
                f"but {self.store!s} stores {[tuple(c) for c in stored]}"
            )

    def _stored_neighborhood(self) -> list[Coordinate] | None:
        if not self.exists():
            return None
        attrs = self.zarr_array("r").attrs
        if "neighborhood" not in attrs:
            return None
        return [Coordinate(offset) for offset in attrs["neighborhood"]]  # type: ignore[union-attr]

    @property
    def attrs(self) -> dict[str, Any]:
        """``{"neighborhood": [Coordinate, ...]}``, written as lists of ints."""
        return {"neighborhood": list(self.neighborhood or [])}


class LSD(Dataset):
    """Local shape descriptors (multi-channel float array)."""

    dataset_type: Literal["lsd"] = "lsd"

    @property
    def attrs(self) -> dict[str, Any]:
        return {"lsds": True}


class Labels(Dataset):
    """Integer labels: fragments, segments, masks. 0 is background."""

    dataset_type: Literal["labels"] = "labels"

    @property
    def attrs(self) -> dict[str, Any]:
        return {}


class CloudVolumeWrapper(Dataset):
    """A neuroglancer precomputed volume (image or segmentation layer), read
    through CloudVolume as a read-only input (volara 1.0.5's name; needs
    ``pip install "volara[cloudvolume]"``).

    It reads as any other dataset: axes ``[c,] z, y, x`` (CloudVolume's
    ``x, y, z, c`` reversed; a single channel is dropped, so a segmentation
    or a grey-scale image is ``z, y, x``), voxel size and offset in nm
    unless overridden. Tasks cannot write it: `writable` is always False.
    """

    dataset_type: Literal["cloudvolume"] = "cloudvolume"
    store: str
    """The volume's CloudVolume path: ``file:///data/em/image`` (a local
    precomputed layer), ``gs://bucket/layer``, ``s3://bucket/layer`` or
    ``precomputed://https://host/layer``."""
    voxel_size: PydanticCoordinate | None = None
    """Size of one voxel in world units, z, y, x. ``None``: the volume's
    resolution at `mip`, in nm (precomputed stores it x, y, z)."""
    offset: PydanticCoordinate | None = None
    """World coordinate of the first voxel, z, y, x, in the units of
    `voxel_size`. ``None``: the volume's ``voxel_offset`` times its voxel
    size."""
    units: list[str] | None = None
    """Unit of each spatial axis. ``None``: ``["nm", "nm", "nm"]``."""
    writable: Literal[False] = False
    """Always False: precomputed volumes are inputs only."""
    mip: int = 0
    """Which resolution level to read: 0 is the full resolution, each level
    above is a downsampled copy stored in the same volume."""
    fill_missing: bool = False
    """Read chunks missing from storage as 0 instead of failing (sparse or
    partly uploaded volumes)."""
    use_https: bool = True
    """Read ``gs://`` and ``s3://`` volumes through their public https
    address, without credentials (as volara 1.0.5 did); set False to use
    CloudVolume's credentials (``~/.cloudvolume/secrets``). Local volumes
    ignore it."""

    @field_validator("store", mode="wrap")
    @classmethod
    def _store_as_path(cls, store: Any, handler: Any) -> Path | str:
        # replaces Dataset's: a CloudVolume path is always a url
        if not stores.is_url(store):
            raise ValueError(
                f"CloudVolumeWrapper.store: {store!r} is not a CloudVolume path; "
                "give a url such as 'file:///data/em/image' or 'gs://bucket/layer'"
            )
        return store

    @field_validator("zarr_kwargs", "s3_kwargs")
    @classmethod
    def _not_for_precomputed(cls, value: Any, info: Any) -> Any:
        # silently ignoring them would hide a config meant for a zarr store
        if value:
            raise ValueError(
                f"{info.field_name} configures zarr stores; a precomputed volume "
                "is read by CloudVolume (credentials: ~/.cloudvolume/secrets)"
            )
        return value

    @property
    def attrs(self) -> dict[str, Any]:
        return {}

    def volume(self) -> Any:
        """The ``cloudvolume.CloudVolume`` at `store` and `mip`."""
        return precomputed.open_volume(
            str(self.store), self.mip, self.fill_missing, self.use_https
        )

    def check_reachable(self, what: str | None = None) -> None:
        """Nothing to check ahead: opening the volume reports CloudVolume's
        own errors."""

    def exists(self) -> bool:
        """Whether a precomputed volume (its ``info`` file) is at `store`."""
        return precomputed.volume_exists(
            str(self.store), self.mip, self.fill_missing, self.use_https
        )

    def array(self, mode: OpenMode = "r") -> Array:
        """Open the volume read-only, with this model's metadata overrides
        and `channels`."""
        if mode != "r":
            self.check_writable()
        overrides: dict[str, Any] = {
            "voxel_size": self.voxel_size,
            "offset": self.offset,
            "axis_names": self.axis_names,
            "units": self.units,
        }
        array = precomputed.precomputed_array(
            self.volume(),
            f"{self.store}@{self.mip}",
            **{k: v for k, v in overrides.items() if v is not None},
        )
        self._apply_lazy_ops(array)
        return array

    def check_writable(self) -> None:
        raise PermissionError(
            f"CloudVolumeWrapper.writable is False for {self.store!s}: precomputed "
            "volumes are read-only inputs in volara. Write the output to a zarr "
            "dataset instead."
        )

    def zarr_array(self, mode: OpenMode = "r") -> zarr.Array:
        raise TypeError(
            f"CloudVolumeWrapper.store: {self.store!s} is a precomputed volume, "
            "not a zarr array; open it with array()"
        )

    def prepare(self, *args: Any, **kwargs: Any) -> None:
        self.check_writable()

    def drop(self) -> None:
        self.check_writable()


AnyDataset = Annotated[
    Raw | Affs | LSD | Labels | CloudVolumeWrapper, Field(discriminator="dataset_type")
]
"""Any built-in dataset, resolved from JSON by its ``dataset_type``."""

Raw.model_rebuild()
