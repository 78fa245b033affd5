"""The registration pipeline: settings (:mod:`~caio.pipeline.config`), networks
(:mod:`~caio.pipeline.models`), the stages of one pair (:mod:`~caio.pipeline.stages`,
:mod:`~caio.pipeline.pair`) and the run loop that writes every output (:mod:`~caio.pipeline.batch`).

Imports go one way only: config, trace <- models <- stages <- pair <- batch. What ran on each pair is a
:class:`~caio.pipeline.trace.PairTrace` (:mod:`~caio.pipeline.trace`); the status is built from it.
"""

from caio.pipeline.batch import RunSteps, RunSummary, run
from caio.pipeline.config import PipelineConfig
from caio.pipeline.models import Models, load_models
from caio.pipeline.pair import PairResult, register_pair
from caio.pipeline.trace import PairTrace, StepRecord

__all__ = [
    "Models",
    "PairResult",
    "PairTrace",
    "PipelineConfig",
    "RunSteps",
    "RunSummary",
    "StepRecord",
    "load_models",
    "register_pair",
    "run",
]
