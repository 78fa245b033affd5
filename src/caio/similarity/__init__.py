"""Similarity terms of caio, each written once per backend (PyTorch here, Numba in :mod:`caio.kernels`).

* :mod:`caio.similarity.windows` -- box sums and box means over cubic windows.
* :mod:`caio.similarity.lncc` -- local normalised cross-correlation: box window with its analytic gradient
  (the engine), squared LNCC (any contrast), Gaussian window for autograd (the cascade), masked Gaussian window
  (the contrast gate).
* :mod:`caio.similarity.ssd` -- squared difference of feature maps and its gradient.
* :mod:`caio.similarity.mind` -- MIND-SSC descriptors.

Below :mod:`caio.engine`, :mod:`caio.refine` and :mod:`caio.contrast`, which all use it; above :mod:`caio.spatial`
and :mod:`caio.kernels`.
"""
