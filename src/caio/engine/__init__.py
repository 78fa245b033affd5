"""The registration engine: anytime multi-resolution greedy diffeomorphic optimisation.

:func:`register` is the tensor-level entry point (also ``caio.register``); see :mod:`caio.engine.multiresolution`.
"""

from caio.engine.multiresolution import register, warm_up
from caio.engine.optimizer import LevelSettings
from caio.engine.settings import EngineConfig
from caio.engine.trace import EngineTrace, LevelTrace

__all__ = ["EngineConfig", "EngineTrace", "LevelSettings", "LevelTrace", "register", "warm_up"]
