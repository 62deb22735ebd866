"""volara: blockwise image processing for large 3D microscopy volumes.

Import surfaces: `volara.datasets` (zarr arrays), `volara.dbs` (graph
databases), `volara.lut` (look-up tables), `volara.workers` (where workers
run), `volara.blockwise` (tasks and pipelines), `volara.logging` (where logs
and block tracking go).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("volara")
except PackageNotFoundError:  # running from a source tree
    __version__ = "2.0.0"
__version_info__ = tuple(
    int(part) for part in __version__.split(".")[:3] if part.isdigit()
)

__all__ = ["__version__", "__version_info__", "blockwise", "datasets", "dbs", "lut"]


def __getattr__(name: str):
    if name in {"blockwise", "datasets", "dbs", "lut", "workers", "utils"}:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'volara' has no attribute {name!r}")
