"""Trained networks as configs: where a model is stored, the shapes it takes
and gives, and how its outputs are stored.

`Predict` runs a model block by block. The model's geometry decides the
blocks: each block reads ``eval_input_shape`` voxels and writes
``eval_output_shape`` voxels, the difference being the context the network
needs to predict its output without tile artifacts.

The config fields are those of volara-torch 1.0.1's ``volara_torch.models``
so its configs load unchanged. Only ``model_type: "torch"`` is supported;
volara-ml's ``"jax"`` models are refused with an error saying so. torch is
imported only when a model is loaded (``pip install "volara[torch]"``).
"""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from funlib.geometry import Coordinate
from pydantic import model_validator

from .utils import PydanticCoordinate, StrictBaseModel

if TYPE_CHECKING:
    import torch

SUPPORTED_MODEL_TYPES = ("torch",)


def import_torch() -> Any:
    """torch, or an error saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            'Predict needs PyTorch: install it with pip install "volara[torch]"'
        ) from e
    return torch


class Model(StrictBaseModel, ABC):
    """A trained network's geometry and output range. All shapes are in
    voxels of the input array, one value per spatial axis."""

    in_channels: int
    """Number of channels the network takes (1 for plain EM)."""
    min_input_shape: PydanticCoordinate
    """Smallest input the network accepts, in voxels, e.g. ``[36, 212, 212]``
    for a UNet whose downsampling and valid convolutions need that much."""
    min_output_shape: PydanticCoordinate
    """What the network returns for an input of `min_input_shape`, in
    voxels. The difference is the context each block reads around the region
    it writes."""
    min_step_shape: PydanticCoordinate
    """Smallest amount, in voxels, by which the input may grow and still be
    valid for the network (e.g. the product of the downsampling factors)."""
    out_channels: list[int | None] | int | None
    """Channels of each output: an integer for a network with one output, a
    list for a network returning a tuple of outputs. ``None`` (alone or in
    the list): as many channels as the input has."""
    out_range: tuple[float, float]
    """``(low, high)``: the range of the network's output values. Outputs are
    stored as uint8, ``low`` mapped to 0 and ``high`` to 255 (values outside
    are clipped), e.g. ``(0, 1)`` for a sigmoid and ``(-1, 1)`` for tanh."""
    context_override: tuple[PydanticCoordinate, PydanticCoordinate] | None = None
    """``(low, high)`` context in voxels for a network whose context is not
    the same on both sides; the two must add up to `min_input_shape` minus
    `min_output_shape`. ``None``: half of that difference on each side."""

    @model_validator(mode="after")
    def _check_geometry(self) -> Model:
        dims = self.min_input_shape.dims
        for field in ("min_output_shape", "min_step_shape"):
            if getattr(self, field).dims != dims:
                raise ValueError(
                    f"{field} has {getattr(self, field).dims} values but "
                    f"min_input_shape has {dims}: give one value per spatial axis"
                )
        difference = self.min_input_shape - self.min_output_shape
        if any(d < 0 for d in difference):
            raise ValueError(
                f"min_output_shape {tuple(self.min_output_shape)} is larger than "
                f"min_input_shape {tuple(self.min_input_shape)}"
            )
        if self.context_override is None and any(d % 2 for d in difference):
            raise ValueError(
                f"min_input_shape - min_output_shape = {tuple(difference)} is odd "
                "in some axis, so the context cannot be split evenly: give "
                "context_override as (low, high)"
            )
        if self.context_override is not None:
            low, high = self.context_override
            if low + high != difference:
                raise ValueError(
                    f"context_override {tuple(low)} + {tuple(high)} must add up to "
                    f"min_input_shape - min_output_shape = {tuple(difference)}"
                )
        low_value, high_value = self.out_range
        if not high_value > low_value:
            raise ValueError(f"out_range {self.out_range}: high must exceed low")
        if isinstance(self.out_channels, list) and not self.out_channels:
            raise ValueError("out_channels is an empty list: give one entry per output")
        return self

    @property
    def context(self) -> Coordinate | tuple[Coordinate, Coordinate]:
        """Voxels read beyond the written region: one Coordinate for both
        sides, or ``(low, high)`` from `context_override`."""
        if self.context_override is not None:
            return self.context_override
        return (self.min_input_shape - self.min_output_shape) // 2

    @property
    @abstractmethod
    def eval_input_shape(self) -> Coordinate:
        """The input shape each block gives the network, in voxels."""

    @property
    @abstractmethod
    def eval_output_shape(self) -> Coordinate:
        """What the network returns for `eval_input_shape`, in voxels: the
        region each block writes."""

    @property
    def num_out_channels(self) -> list[int | None]:
        """Channels per output, as a list with one entry per output."""
        if isinstance(self.out_channels, list):
            return list(self.out_channels)
        return [self.out_channels]

    @abstractmethod
    def model(self) -> torch.nn.Module:
        """Load the network with its weights, on the CPU."""

    def to_uint8(self, data: np.ndarray) -> np.ndarray:
        """Network outputs as stored: `out_range` mapped to 0..255, clipped,
        truncated to integers (as volara-torch stores them)."""
        low, high = self.out_range
        return np.clip((data - low) / (high - low) * 255, 0, 255).astype(np.uint8)

    def from_uint8(self, data: np.ndarray) -> np.ndarray:
        """Stored outputs back in `out_range`, as float32."""
        low, high = self.out_range
        return data.astype(np.float32) / 255 * (high - low) + low


class TorchModel(Model):
    """A PyTorch network: a whole module saved with ``torch.save`` (or a
    TorchScript module saved with ``torch.jit.save``), optionally with its
    weights in a separate checkpoint."""

    model_type: Literal["torch"] = "torch"
    save_path: Path
    """The saved module. A module saved with ``torch.save`` is unpickled, so
    its class must be importable where the workers run (and the file must
    come from someone you trust); a TorchScript file needs nothing else."""
    checkpoint_file: Path | None = None
    """Weights to load into the module: a state dict, plain or under the key
    ``model_state_dict`` (as training scripts usually save it). ``None``:
    the weights saved with the module."""
    pred_size_growth: PydanticCoordinate | None = None
    """How much larger than `min_input_shape` each block's input is, in
    voxels (a multiple of `min_step_shape`); the output grows by the same
    amount. Larger blocks use a GPU better. ``None``: the minimal shapes."""

    @model_validator(mode="after")
    def _check_growth(self) -> TorchModel:
        growth = self.pred_size_growth
        if growth is None:
            return self
        if growth.dims != self.min_step_shape.dims:
            raise ValueError(
                f"pred_size_growth has {growth.dims} values; give one per spatial "
                f"axis ({self.min_step_shape.dims})"
            )
        if any(
            g < 0 or g % s for g, s in zip(growth, self.min_step_shape, strict=True)
        ):
            raise ValueError(
                f"pred_size_growth {tuple(growth)} must be a non-negative multiple "
                f"of min_step_shape {tuple(self.min_step_shape)}"
            )
        return self

    @property
    def eval_input_shape(self) -> Coordinate:
        if self.pred_size_growth is None:
            return Coordinate(self.min_input_shape)
        return self.min_input_shape + self.pred_size_growth

    @property
    def eval_output_shape(self) -> Coordinate:
        if self.pred_size_growth is None:
            return Coordinate(self.min_output_shape)
        return self.min_output_shape + self.pred_size_growth

    def check_files(self, where: str) -> None:
        """Raise `FileNotFoundError` naming the field if a file is missing."""
        for field in ("save_path", "checkpoint_file"):
            path = getattr(self, field)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"{where}.{field}: no file at {path!s}. Check the path (it is "
                    "read by every worker, so it must be reachable from where "
                    "they run)."
                )

    def model(self) -> torch.nn.Module:
        torch = import_torch()
        if _is_torchscript(self.save_path):
            module = torch.jit.load(str(self.save_path), map_location="cpu")
        else:
            module = torch.load(self.save_path, map_location="cpu", weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"checkpoint.save_path: {self.save_path!s} holds a "
                f"{type(module).__name__}, not a torch.nn.Module. Save the whole "
                "module with torch.save(model, path), and its weights as "
                "checkpoint_file."
            )
        if self.checkpoint_file is not None:
            module.load_state_dict(self._state_dict(torch))
        return module

    def _state_dict(self, torch: Any) -> dict[str, Any]:
        checkpoint = torch.load(
            self.checkpoint_file, map_location="cpu", weights_only=True
        )
        if not isinstance(checkpoint, dict):
            raise TypeError(
                f"checkpoint.checkpoint_file: {self.checkpoint_file!s} holds a "
                f"{type(checkpoint).__name__}, not a state dict"
            )
        return checkpoint.get("model_state_dict", checkpoint)


def _is_torchscript(path: Path) -> bool:
    # torch.load would detect it too, with a warning on every worker
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())
