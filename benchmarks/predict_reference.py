"""Write ``tests/predict_reference/``: a ``Predict`` config dumped by
volara-torch 1.0.1's own model, the network and weights it names, the input,
and what volara-torch's ``Predict`` (gunpowder) wrote.
``tests/test_predict.py`` runs volara 2 on that config unchanged and
compares.

Needs an environment with volara 1.0.5, volara-torch 1.0.1 and torch::

    python3 -m venv vtvenv
    vtvenv/bin/pip install volara==1.0.5 volara-torch==1.0.1 torch==2.13.0
    python benchmarks/predict_reference.py --volara-torch-python vtvenv/bin/python

gunpowder 1.4 does not import under zarr 3 (``zarr.N5FSStore``,
``zarr._storage``); the driver runs with placeholders for those two names,
put on the path through ``sitecustomize`` so daisy's workers get them too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import zarr

HERE = Path(__file__).parent
REFERENCE_DIR = HERE.parent / "tests" / "predict_reference"
DRIVER = HERE / "drivers" / "volara_torch_predict.py"
COPIED = ("predict.json", "model.pt", "weights.pt", "affs.npy")

ZARR_PLACEHOLDERS = """\
import sys
import types

import zarr

for _name in ("N5FSStore", "N5Store"):
    if not hasattr(zarr, _name):
        setattr(zarr, _name, type(_name, (), {}))
if "zarr._storage.store" not in sys.modules:
    _storage = types.ModuleType("zarr._storage")
    _store = types.ModuleType("zarr._storage.store")
    _store.BaseStore = type("BaseStore", (), {})
    _storage.store = _store
    sys.modules["zarr._storage"] = _storage
    sys.modules["zarr._storage.store"] = _store
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volara-torch-python", required=True, type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shim, case = Path(tmp) / "shim", Path(tmp) / "case"
        shim.mkdir()
        case.mkdir()
        (shim / "sitecustomize.py").write_text(ZARR_PLACEHOLDERS)
        env = {**os.environ, "PYTHONPATH": str(shim)}
        subprocess.run(
            [str(args.volara_torch_python), str(DRIVER)], cwd=case, env=env, check=True
        )
        REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            shutil.copy(case / name, REFERENCE_DIR / name)
        raw = zarr.open_array(str(case / "data.zarr" / "raw"), mode="r")
        np.save(REFERENCE_DIR / "raw.npy", np.asarray(raw[:]))
    print(f"wrote {REFERENCE_DIR}")


if __name__ == "__main__":
    main()
