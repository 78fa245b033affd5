"""Numba CPU kernels: the one place for them.

* :mod:`caio.kernels.filters` -- separable Gaussian and box filters, scratch :class:`~caio.kernels.filters.Workspace`.
* :mod:`caio.kernels.fields` -- trilinear warping with the interpolant's gradient, field composition and scaling.
* :mod:`caio.kernels.similarity` -- LNCC and feature SSD fused with the warp (value and displacement gradient).
* :mod:`caio.kernels.mind` -- MIND-SSC descriptors in three passes.

Each implements the maths of a PyTorch function (:mod:`caio.spatial`, :mod:`caio.similarity`) on float32 NumPy
arrays; the tests compare the two. Above :mod:`caio.spatial`, below everything else.
"""
