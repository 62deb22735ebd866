"""Synthetic EM-like volumes: cells, membranes, intensities, noisy affinities.

Cells are the Voronoi regions of random seed points, measured in world units
(so anisotropic voxels give cells that span few sections but many pixels, as
in serial-section EM), at coordinates bent by a smooth random displacement
field so that boundaries curve instead of being flat planes. Everything is
drawn from the given `numpy.random.Generator`, so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial import cKDTree

from .affinities import offset_slices


def smooth_displacement(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    amplitude: float,
    wavelength: float,
    rng: np.random.Generator,
    terms: int = 8,
) -> np.ndarray:
    """A smooth random vector field, shape ``(ndim, *shape)``, in world units.

    Each component is a sum of ``terms`` separable products of smooth random
    1-D curves (values drawn every ``wavelength`` world units, cubic
    interpolation), scaled to a standard deviation of about ``amplitude``.
    Separable products cost a few multiplications per voxel, where
    interpolating a dense 3-D grid of random values costs seconds.
    """
    shape = tuple(int(s) for s in shape)
    fields = np.zeros((len(shape), *shape), dtype=np.float64)
    for component in fields:
        for _ in range(terms):
            term = np.ones((1,) * len(shape))
            for axis, (size, spacing) in enumerate(zip(shape, voxel_size, strict=True)):
                curve = _smooth_curve(size, spacing, wavelength, rng)
                view = [1] * len(shape)
                view[axis] = size
                term = term * curve.reshape(view)
            component += term
    fields *= amplitude / np.sqrt(terms)
    return fields


def _smooth_curve(
    size: int, spacing: float, wavelength: float, rng: np.random.Generator
) -> np.ndarray:
    knots = max(4, int(np.ceil(size * spacing / wavelength)) + 1)
    values = rng.standard_normal(knots)
    return zoom(values, size / knots, order=3, mode="nearest", grid_mode=True)[:size]


def random_cells(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    num_cells: int,
    rng: np.random.Generator,
    warp: float | None = None,
) -> np.ndarray:
    """A uint64 label volume of ``num_cells`` irregular cells, ids ``1..num_cells``.

    Each voxel gets the id of the nearest seed point (world-unit distance) to
    its displaced center; ``warp`` is the displacement amplitude in world
    units (default: a quarter of the typical cell radius). Cells whose seed
    is crowded out may end up empty, so fewer ids can be present.
    """
    if num_cells < 1:
        raise ValueError(f"num_cells must be at least 1, got {num_cells}")
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(voxel_size, dtype=np.float64)
    extent = np.asarray(shape) * spacing
    radius = float((np.prod(extent) / num_cells) ** (1 / len(shape)) / 2)
    amplitude = radius / 4 if warp is None else float(warp)
    seeds = rng.uniform(0, extent, size=(num_cells, len(shape)))

    displacement = smooth_displacement(shape, voxel_size, amplitude, 2 * radius, rng)
    points = np.empty((int(np.prod(shape)), len(shape)), dtype=np.float64)
    for axis in range(len(shape)):
        centers = (np.arange(shape[axis]) + 0.5) * spacing[axis]
        view = [1] * len(shape)
        view[axis] = shape[axis]
        points[:, axis] = (centers.reshape(view) + displacement[axis]).ravel()
    _, nearest = cKDTree(seeds).query(points, workers=-1)
    return (np.asarray(nearest, dtype=np.uint64) + 1).reshape(shape)


def add_membranes(labels: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` with a one-voxel background (0) seam wherever two
    cells touch: a voxel is cleared when its successor along any axis has
    another label."""
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        offset = [0] * labels.ndim
        offset[axis] = 1
        first, second = offset_slices(labels.shape, offset)
        boundary[first] |= labels[first] != labels[second]
    return np.where(boundary, np.uint64(0), labels).astype(np.uint64)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Where a voxel is background or touches another label along any axis."""
    edge = labels == 0
    for axis in range(labels.ndim):
        offset = [0] * labels.ndim
        offset[axis] = 1
        first, second = offset_slices(labels.shape, offset)
        differs = labels[first] != labels[second]
        edge[first] |= differs
        edge[second] |= differs
    return edge


def raw_from_labels(
    labels: np.ndarray,
    noise: float,
    rng: np.random.Generator,
    blur: Sequence[float] | float = 1.0,
) -> np.ndarray:
    """EM-like uint8 intensities: each cell a random grey level, dark cell
    boundaries, blurred by ``blur`` voxels (gaussian sigma) and with gaussian
    noise of standard deviation ``noise`` (as a fraction of the full range)."""
    ids = int(labels.max()) + 1
    grey = rng.uniform(0.55, 0.8, size=ids)
    image = grey[labels]
    image[boundaries(labels)] = 0.15
    image = gaussian_filter(image, blur)
    image += rng.standard_normal(image.shape) * noise
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def noisy_affinities(
    affs: np.ndarray,
    noise: float,
    rng: np.random.Generator,
    blur: float = 0.0,
) -> np.ndarray:
    """Float32 affinities in [0, 1] that look predicted: ``affs`` blurred by a
    gaussian of ``blur`` voxels along each spatial axis (channels are not
    mixed), plus gaussian noise of standard deviation ``noise``, clipped.
    With ``noise=0`` and ``blur=0`` the input comes back unchanged."""
    out = np.array(affs, dtype=np.float32)
    if blur > 0:
        out = gaussian_filter(out, (0, *([blur] * (out.ndim - 1))))
    if noise > 0:
        # in place: these arrays are the largest of a sample volume
        jitter = rng.standard_normal(out.shape, dtype=np.float32)
        jitter *= np.float32(noise)
        out += jitter
    np.clip(out, 0.0, 1.0, out=out)
    return out
