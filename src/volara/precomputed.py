"""Neuroglancer precomputed volumes, read through CloudVolume as
`funlib.persistence.Array`s in volara's axis order.

CloudVolume indexes a volume as ``[x, y, z, channel]`` in voxels counted from
the volume's origin (``voxel_offset``), with voxel size and offset in nm;
volara's arrays are ``[channel, z, y, x]`` with a single channel dropped.
`PrecomputedView` does that translation, so block functions read a
precomputed volume through `read_region` like any zarr array. The
`cloud-volume` package is imported only here, and only when a volume is
opened (``pip install "volara[cloudvolume]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from funlib.persistence import Array

INSTALL_HINT = 'pip install "volara[cloudvolume]"'


def _cloudvolume() -> Any:
    try:
        import cloudvolume
    except ImportError as e:
        raise ImportError(
            f"CloudVolume datasets need the cloud-volume package: {INSTALL_HINT}"
        ) from e
    return cloudvolume


def open_volume(url: str, mip: int, fill_missing: bool, use_https: bool) -> Any:
    """The ``cloudvolume.CloudVolume`` at ``url``, at resolution ``mip``."""
    return _cloudvolume().CloudVolume(
        url,
        mip=mip,
        fill_missing=fill_missing,
        use_https=use_https,
        progress=False,
        # reads arrive from many block workers at once: a thread pool per
        # read in every worker would oversubscribe the cores
        parallel=1,
    )


def volume_exists(url: str, mip: int, fill_missing: bool, use_https: bool) -> bool:
    """Whether a precomputed volume (its ``info`` file) is at ``url``."""
    missing = _cloudvolume().exceptions.InfoUnavailableError
    try:
        open_volume(url, mip, fill_missing, use_https)
    except missing:
        return False
    return True


class PrecomputedView:
    """A read-only, numpy-like view of a CloudVolume: axes ``[c,] z, y, x``,
    indices counted from 0 at the volume's first voxel, the channel axis
    dropped if there is only one. Indexed with slices of step 1 and integers
    (what dask asks for)."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume
        size = [int(s) for s in volume.shape[:3]]
        self.channels = int(volume.num_channels)
        spatial = tuple(reversed(size))
        self.shape = ((self.channels,) if self.channels > 1 else ()) + spatial
        self.ndim = len(self.shape)
        self.dtype = np.dtype(volume.dtype)
        self._origin = [int(o) for o in volume.voxel_offset]

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        # an integer reads an axis of length 1, dropped at the end
        dropped = tuple(0 if _is_integer(i) else slice(None) for i in index)
        slices = [
            slice(i % s, i % s + 1) if _is_integer(i) else i
            for i, s in zip(index, self.shape, strict=True)
        ]
        if any(not isinstance(i, slice) or i.step not in (None, 1) for i in slices):
            raise IndexError(
                f"PrecomputedView takes slices and integers, got {index!r}"
            )
        bounds = [i.indices(s)[:2] for i, s in zip(slices, self.shape, strict=True)]
        return self._read(bounds)[dropped]

    def _read(self, bounds: list[tuple[int, int]]) -> np.ndarray:
        """The voxels from ``begin`` to ``end`` on each axis, in voxels
        counted from 0 (within the volume)."""
        channel, spatial = bounds[: self.ndim - 3], bounds[self.ndim - 3 :]
        xyz = [
            slice(begin + origin, end + origin)
            for (begin, end), origin in zip(
                reversed(spatial), self._origin, strict=True
            )
        ]
        if any(s.stop <= s.start for s in xyz):
            return np.zeros(_lengths(bounds), dtype=self.dtype)
        channels = slice(*channel[0]) if channel else slice(0, 1)
        # CloudVolume answers [x, y, z, c]: turn it into [c, z, y, x]
        data = np.asarray(self.volume[(*xyz, channels)]).transpose(3, 2, 1, 0)
        return np.ascontiguousarray(data if channel else data[0])


def _is_integer(index: Any) -> bool:
    return isinstance(index, int | np.integer)


def _lengths(bounds: list[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(max(end - begin, 0) for begin, end in bounds)


def precomputed_array(volume: Any, name: str, **overrides: Any) -> Array:
    """``volume`` as an `Array`: voxel size and offset from the volume's
    metadata (nm), reversed to z, y, x, unless ``overrides`` (`Array`
    keyword arguments) say otherwise; chunked by 8 storage chunks per axis
    (a small dask graph; a read still fetches only the chunks it needs)."""
    import dask.array as da

    view = PrecomputedView(volume)
    storage_chunks = [int(c) * 8 for c in reversed(volume.chunk_size[:3])]
    channel_chunks = [view.channels] if view.channels > 1 else []
    data = da.from_array(
        view,
        chunks=tuple(channel_chunks + storage_chunks),
        # a fixed name: dask would otherwise hash the view, pickling the volume
        name=f"precomputed-{name}",
        meta=np.empty((0,) * view.ndim, dtype=view.dtype),
    )
    voxel_size = overrides.pop("voxel_size", None) or _voxel_size(volume, name)
    origin = [int(o) for o in reversed(volume.voxel_offset)]
    metadata: dict[str, Any] = {
        "offset": [o * v for o, v in zip(origin, voxel_size, strict=True)],
        "voxel_size": voxel_size,
        "axis_names": ["c^"] * len(channel_chunks) + ["z", "y", "x"],
        "units": ["nm", "nm", "nm"],
        "types": ["channel"] * len(channel_chunks) + ["space"] * 3,
    }
    return Array(data, **{**metadata, **overrides})


def _voxel_size(volume: Any, name: str) -> list[int]:
    """The volume's resolution in nm, z, y, x. volara's grids are integer:
    a fractional resolution (e.g. 3.8 nm) needs an explicit voxel size."""
    resolution = [float(v) for v in reversed(volume.resolution)]
    if any(not v.is_integer() for v in resolution):
        raise ValueError(
            f"CloudVolume.voxel_size: {name} has a resolution of {resolution} nm "
            "(z, y, x), not whole numbers. Give voxel_size in integer world "
            "units, e.g. in Angstrom, with offset and units to match."
        )
    return [int(v) for v in resolution]
