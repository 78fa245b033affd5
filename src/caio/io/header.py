"""Header first: what an image file declares is checked before a byte of its voxel data is read, and the
data are then read in bounded slabs (never more than the header promised).

:func:`describe` turns a lazily loaded nibabel image into an :class:`ImageHeader` after checking its
dimensions (every one at least 1), data type (integers or floats), scaling (``scl_slope`` finite;
0 or NaN mean "no scaling" as in the NIfTI standard; ``scl_inter`` finite), voxel offset (at most
:data:`MAX_VOX_OFFSET`; for uncompressed files, offset + data size equal to the file size) and
geometry (:func:`geometry_problem`: an affine that is finite and invertible, voxel sizes positive and
finite). A geometry problem is returned, not raised: commands working in array indices (``predict``,
``evaluate``, ``qc``, as the LUMIR evaluator) ignore the affine and say so; commands that use it
(``register``, ``warp``) refuse the file (:func:`caio.io.load_image`).

:func:`read_data` streams the data through nibabel's opener (gzip decompressed as it is read) into
the output array, slab by slab, scaling and checking values on the way (NaN/Inf, ``|v|`` above a
bound) and stopping a compressed NIfTI whose data go on past what its header declares.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from caio.errors import CaioInputError
from caio.io.memory import READ_CHUNK_BYTES

MAX_VOX_OFFSET = 64 << 20
"""Largest accepted voxel offset (header plus extensions), bytes: skipping it costs decompression time."""

VOXEL_SIZE_RANGE_MM = (1e-6, 1e4)
"""Accepted voxel sizes (the affine's column norms, and ``pixdim``), millimetres."""

MAX_AFFINE_CONDITION = 1e8
"""Largest accepted condition number of the affine's 3x3 part: beyond it, it is singular in practice."""

COMPRESSED_SUFFIXES = tuple(k for k in ImageOpener.compress_ext_map if k)


def one_line(err: BaseException) -> str:
    """``"TypeName: message"`` on one line."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares, checked; the voxel data are still on disk.

    Attributes:
        path: the file.
        image: the nibabel image (lazy: ``image.dataobj`` is an array proxy).
        shape: dimensions as declared (e.g. ``(D0, D1, D2)`` or ``(D0, D1, D2, 3)``).
        dtype: on-disk data type (byte order included).
        slope, inter: scaling applied to the stored values (1 and 0: none).
        offset: byte offset of the data in the (decompressed) file.
        geometry_problem: ``""``, or why the affine cannot be used (see :func:`geometry_problem`).
    """

    path: Path
    image: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    slope: float
    inter: float
    offset: int
    geometry_problem: str = ""

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def scaled(self) -> bool:
        return self.slope != 1.0 or self.inter != 0.0

    @property
    def is_nifti(self) -> bool:
        return isinstance(self.image, nib.Nifti1Image | nib.Nifti2Image | nib.Nifti1Pair | nib.Nifti2Pair)

    def value_bound(self) -> float:
        """Largest ``|value|`` the stored type can give once scaled (``inf`` for floats)."""
        if self.dtype.kind == "f":
            return math.inf
        info = np.iinfo(self.dtype)
        return max(abs(int(info.min)), abs(int(info.max))) * abs(self.slope) + abs(self.inter)


def quiet_nibabel() -> None:
    """Stop nibabel printing its header fixes ("pixdim[1,2,3] should be positive ...") to stderr:
    caio reports one line per problem itself. nibabel still raises for what it cannot read."""
    logging.getLogger("nibabel.global").setLevel(logging.CRITICAL + 1)


def _raw_slope(image: Any, path: Path) -> float:
    """``scl_slope`` as written in the file (nibabel resets it in ``image.header`` and ignores an infinite one)."""
    holder = image.file_map.get("header") or image.file_map.get("image")
    header_file = (holder.filename if holder is not None else None) or str(path)
    with ImageOpener(header_file) as fobj:
        return float(type(image.header).from_fileobj(fobj, check=False)["scl_slope"])


def _scaling(image: Any, path: Path) -> tuple[float, float]:
    if isinstance(image, nib.Nifti1Image | nib.Nifti2Image | nib.Nifti1Pair | nib.Nifti2Pair):
        raw = _raw_slope(image, path)
        if math.isinf(raw):
            raise CaioInputError(f"{path}: scl_slope {raw} is not finite (0 or NaN mean no scaling; fix the header)")
    proxy = image.dataobj
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise CaioInputError(f"{path}: scaling slope {slope} / intercept {inter} is not finite")
    return slope, inter


def _check_extent(image: Any, path: Path, offset: int, nbytes: int) -> None:
    """Uncompressed files: the data must end exactly where the file ends (NIfTI) or no earlier (MGH)."""
    if offset > MAX_VOX_OFFSET:
        raise CaioInputError(f"{path}: voxel offset {offset} bytes, beyond {MAX_VOX_OFFSET >> 20} MiB of header")
    data_file = str(getattr(image.dataobj, "file_like", path))
    if data_file.lower().endswith(COMPRESSED_SUFFIXES):
        return  # checked while reading: decompression stops at the declared size (read_data)
    try:
        size = os.path.getsize(data_file)
    except OSError as err:
        raise CaioInputError(f"{data_file}: cannot read ({err.strerror or err})") from None
    if size < offset + nbytes:
        raise CaioInputError(
            f"{data_file}: truncated or corrupt image data (the header declares {nbytes} bytes from offset "
            f"{offset}, the file holds {max(size - offset, 0)})"
        )
    is_nifti = isinstance(image, nib.Nifti1Image | nib.Nifti2Image | nib.Nifti1Pair | nib.Nifti2Pair)
    if is_nifti and size > offset + nbytes:
        raise CaioInputError(
            f"{data_file}: {size - offset} bytes of data, more than the {nbytes} its header declares "
            f"(dims x data type); header and data disagree"
        )


def geometry_problem(image: Any) -> str:
    """Why ``image``'s affine cannot be used, or ``""``.

    Checked: the affine caio would use (nibabel's choice: sform when ``sform_code > 0``, else qform when
    ``qform_code > 0``, else ``pixdim``) is finite, its 3x3 part invertible (condition number at most
    :data:`MAX_AFFINE_CONDITION`), and voxel sizes (its column norms and the header's zooms) lie in
    :data:`VOXEL_SIZE_RANGE_MM`. A non-orthogonal (sheared) sform is valid NIfTI and accepted.
    """
    header = image.header
    source = "affine"
    if isinstance(header, nib.Nifti1Header):  # Nifti2Header derives from it
        codes = int(header["sform_code"]), int(header["qform_code"])
        source = f"sform (sform_code {codes[0]})" if codes[0] > 0 else "qform" if codes[1] > 0 else "pixdim affine"
    affine = image.affine
    if affine is None:
        return "no affine in the header"
    affine = np.asarray(affine, np.float64)
    if not np.isfinite(affine).all():
        return f"{source} has NaN or infinite values"
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular[0] == 0 or singular[-1] * MAX_AFFINE_CONDITION < singular[0]:
        return f"singular {source}: its voxel-to-world matrix cannot be inverted"
    low, high = VOXEL_SIZE_RANGE_MM
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    zooms = np.asarray(header.get_zooms()[:3], np.float64)
    for name, values in (("voxel sizes of the " + source, sizes), ("pixdim voxel sizes", zooms)):
        if not (np.isfinite(values).all() and (values >= low).all() and (values <= high).all()):
            shown = ", ".join(f"{v:.3g}" for v in values)
            return f"{name} ({shown}) outside {low:g}-{high:g} mm"
    return ""


def describe(image: Any, path: str | os.PathLike) -> ImageHeader:
    """Check what ``image``'s header declares (see the module docstring); read no voxel data.

    Raises:
        CaioInputError: a dimension below 1, an unsupported data type, non-finite scaling, a voxel
            offset beyond :data:`MAX_VOX_OFFSET`, an uncompressed file shorter or longer than declared.
    """
    path = Path(path)
    proxy = image.dataobj
    if not nib.is_proxy(proxy):
        raise CaioInputError(f"{path}: not an image file nibabel reads lazily")
    shape = tuple(int(n) for n in proxy.shape)
    if not shape or min(shape) < 1:
        raise CaioInputError(f"{path}: header dims {shape} declare no voxels (each dimension must be at least 1)")
    dtype = np.dtype(proxy.dtype)
    if dtype.kind not in "iuf":
        raise CaioInputError(f"{path}: data type {dtype} is not supported (expected integers or floats)")
    slope, inter = _scaling(image, path)
    offset = int(proxy.offset)
    _check_extent(image, path, offset, math.prod(shape) * dtype.itemsize)
    return ImageHeader(path, image, shape, dtype, slope, inter, offset, geometry_problem(image))


def _read_exactly(fobj: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = fobj.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def read_data(
    header: ImageHeader, out_dtype: np.dtype | type | None = np.float32, max_abs: float | None = None
) -> np.ndarray:
    """Stream the voxel data of ``header`` into an array of its declared shape (file order).

    Args:
        out_dtype: output type (``None``: the stored type, or float32 when the file is scaled).
        max_abs: largest accepted ``|value|`` after scaling (``None``: no bound); NaN and Inf are
            always refused.
    Returns:
        ``header.shape`` array in the file's memory order (Fortran for NIfTI), scaled.
    Raises:
        CaioInputError: data shorter than declared, a compressed NIfTI whose data go on past the
            declared size, a decompression error, NaN/Inf, or a value beyond ``max_abs``.
    """
    path, proxy = header.path, header.image.dataobj
    if out_dtype is None:
        out_dtype = np.float32 if header.scaled else header.dtype.newbyteorder("=")
    order = getattr(proxy, "order", "F")
    out = np.empty(header.shape, np.dtype(out_dtype), order=order)
    flat = out.reshape(-1, order=order)  # a view: slabs are written straight into ``out``
    per_slab = max(1, READ_CHUNK_BYTES // header.dtype.itemsize)
    check_values = header.dtype.kind == "f" or (max_abs is not None and header.value_bound() > max_abs)
    buffer = bytearray(per_slab * header.dtype.itemsize)
    try:
        with ImageOpener(str(getattr(proxy, "file_like", path))) as fobj:
            fobj.seek(header.offset)
            for start in range(0, header.voxels, per_slab):
                count = min(per_slab, header.voxels - start)
                view = memoryview(buffer)[: count * header.dtype.itemsize]
                if _read_exactly(fobj, view) < len(view):
                    raise CaioInputError(
                        f"{path}: truncated or corrupt image data (the file ends after {start} of "
                        f"{header.voxels} declared voxels)"
                    )
                values = np.frombuffer(view, header.dtype)
                if header.scaled:
                    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are refused just below
                        values = values * header.slope + header.inter
                if check_values:
                    _check_values(values, path, max_abs)
                flat[start : start + count] = values
            if header.is_nifti and fobj.read(1):
                raise CaioInputError(
                    f"{path}: data go on past the {header.voxels * header.dtype.itemsize} bytes its header "
                    "declares (dims x data type); header and data disagree"
                )
    except CaioInputError:
        raise
    except (OSError, EOFError, ValueError) as err:  # gzip/zlib errors, a short or broken stream
        raise CaioInputError(f"{path}: truncated or corrupt image data ({one_line(err)})") from None
    return out


def _check_values(values: np.ndarray, path: Path, max_abs: float | None) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CaioInputError(f"{path}: contains NaN or infinite values")
    if max_abs is not None and values.size:
        peak = float(np.abs(values.astype(np.float64, copy=False)).max())
        if peak > max_abs:
            raise CaioInputError(
                f"{path}: intensity {peak:.3g} beyond {max_abs:.0e} (rescale the image, e.g. to [0, 255])"
            )
