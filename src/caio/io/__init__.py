"""LUMIR file interface: dataset JSON and pair naming (:mod:`caio.io.dataset`), volumes and
displacement files (:mod:`caio.io.volumes`), atomic writes (:mod:`caio.io.atomic`).

The public names are re-exported here: ``from caio.io import read_volume``.
"""

from caio.io.atomic import replace_atomically, write_json_atomic, write_nifti_atomic, write_text_atomic
from caio.io.dataset import (
    LUMIR_SHAPE,
    Pair,
    evaluated_output_name,
    load_pairs,
    output_names,
    parse_lumir_name,
    resolve_data_path,
)
from caio.io.volumes import (
    conform_to_shape,
    read_displacement,
    read_volume,
    validate_displacement_file,
    write_displacement,
)

__all__ = [
    "LUMIR_SHAPE",
    "Pair",
    "conform_to_shape",
    "evaluated_output_name",
    "load_pairs",
    "output_names",
    "parse_lumir_name",
    "read_displacement",
    "read_volume",
    "replace_atomically",
    "resolve_data_path",
    "validate_displacement_file",
    "write_displacement",
    "write_json_atomic",
    "write_nifti_atomic",
    "write_text_atomic",
]
