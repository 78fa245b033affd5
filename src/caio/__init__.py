"""caio: contrast-agnostic instance optimisation for deformable brain MRI registration.

``caio.register`` is the tensor-level registration engine (:func:`caio.engine.register`); it is
loaded on first use so that ``import caio.io`` and the command line stay light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "register":
        from caio.engine import register

        return register
    raise AttributeError(f"module 'caio' has no attribute {name!r}")
