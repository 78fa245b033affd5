"""LUMIR file interface: dataset JSON and pair naming (:mod:`caio.io.dataset`), volumes and
displacement files (:mod:`caio.io.volumes`), header-first checks and streamed reading
(:mod:`caio.io.header`), memory bounds (:mod:`caio.io.memory`), atomic writes (:mod:`caio.io.atomic`).

The public names are re-exported here: ``from caio.io import read_volume``.
"""

from caio.io.atomic import replace_atomically, write_json_atomic, write_nifti_atomic, write_text_atomic
from caio.io.dataset import (
    LUMIR_SHAPE,
    Pair,
    check_input_file,
    evaluated_output_name,
    load_pairs,
    output_names,
    parse_lumir_name,
    resolve_data_path,
)
from caio.io.header import ImageHeader
from caio.io.memory import MemoryLimit, available_memory, format_size, memory_limit, parse_size
from caio.io.volumes import (
    MAX_ABS_INTENSITY,
    check_shape,
    conform_to_shape,
    field_of_view,
    image_data,
    inspect_image,
    load_image,
    read_displacement,
    read_image,
    read_volume,
    resample_to_grid,
    same_grid,
    validate_displacement_file,
    write_displacement,
)

__all__ = [
    "LUMIR_SHAPE",
    "MAX_ABS_INTENSITY",
    "ImageHeader",
    "MemoryLimit",
    "available_memory",
    "check_shape",
    "format_size",
    "inspect_image",
    "memory_limit",
    "parse_size",
    "read_image",
    "check_input_file",
    "image_data",
    "load_image",
    "field_of_view",
    "resample_to_grid",
    "same_grid",
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
