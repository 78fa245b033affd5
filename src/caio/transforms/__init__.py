"""Linear (rigid/affine) registration in physical space and its composition with caio's voxel fields.

* :mod:`caio.transforms.world` -- voxel grids in millimetres: pyramid levels, centres of mass, principal axes.
* :mod:`caio.transforms.affine` -- :func:`register_affine`: moments initialisation, then rigid (6 parameters)
  and affine (12) optimisation over a pyramid with torch autograd, under a deadline.
* :mod:`caio.transforms.fields` -- the world transform (and a deformable field) as a displacement in *moving
  voxels*; the inverse of such a map.

World coordinates are those of the NIfTI affines as nibabel gives them (RAS, mm). A world transform ``T`` is a
4x4 matrix that maps a **fixed** world point to the **moving** world point it samples (``warped(p) =
moving(T p)``), the direction ITK's transforms also take (:mod:`caio.io.itk` converts to its LPS).
"""

from caio.transforms.affine import AffineConfig, AffineTrace, register_affine
from caio.transforms.fields import (
    inverse_field,
    moving_voxel_coordinates_through,
    moving_voxel_displacement,
)
from caio.transforms.world import corner_error_mm

__all__ = [
    "AffineConfig",
    "AffineTrace",
    "corner_error_mm",
    "inverse_field",
    "moving_voxel_coordinates_through",
    "moving_voxel_displacement",
    "register_affine",
]
