"""volara 1.0.5's module for contrast correction, kept so that its import
(``from volara.blockwise.intensity_correction import CLAHE``) still works.
The task lives in `volara.blockwise.clahe` and is also importable from
`volara.blockwise`."""

from .clahe import CLAHE

__all__ = ["CLAHE"]
