#!/usr/bin/env python3
"""Container entry point: ``python predict.py`` (the image's CMD, no arguments).

Reads /app/LUMIR25_dataset.json and /app/input, writes /app/output/disp_<F>_<M>.nii.gz
(2024 layout /LUMIR_dataset.json, /input, /output as fallback). Weights are looked up in
the ``weights/`` folder beside this file. All options: ``python predict.py --help``
(the same as ``caio predict``).
"""

import sys
from pathlib import Path

from caio.cli.predict import main

if __name__ == "__main__":
    sys.exit(main(default_weights=Path(__file__).resolve().parent / "weights"))
