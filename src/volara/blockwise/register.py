"""volara 1.0.5's module for the registration tasks, kept so that its
imports (``from volara.blockwise.register import ComputeShift``) still work.
The tasks live in `volara.blockwise.compute_shift` and
`volara.blockwise.apply_shift`; both are also importable from
`volara.blockwise`."""

from .apply_shift import ApplyShift
from .compute_shift import ComputeShift

__all__ = ["ApplyShift", "ComputeShift"]
