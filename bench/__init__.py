"""caio's benchmarks: each script runs from the repository root as ``python -m bench.<name>`` (``--help`` for its
flags; the peers' scripts in ``bench/.venv``, made by ``bash bench/setup_peers.sh``). Results land in ``bench/out/``
(git-ignored). Details and results: ``bench/README.md`` and ``docs/measurements.md``.

Registration against peers (LUMIR evaluator's Dice / HD95 / NDV, and the TRE proxy: label-centroid distance, mm):

* ``registration`` -- caio (engine, pipeline, training-free, cascade) against Greedy, ANTs, ConvexAdam and elastix
  (FireANTs on request) on the real 1 mm pair, IXI, synthetic cross-contrast pairs, the LUMIR-like set and
  ``test_data``; driver and tables.
* ``sets`` -- builds the case folders of those sets (imported by ``registration`` and ``anytime``).
* ``methods`` -- each method's run and the scoring, inside ``registration``'s worker subprocess.
* ``make_lumir_like`` -- builds the LUMIR-like set (IXI T1 + DLMUSE, 160x224x192) in ``bench/out/lumir_like``.
* ``anytime`` -- Dice of ``caio.engine.register`` at fixed time budgets.
* ``real_cross`` -- known-warp recovery on real co-registered contrasts (which cross-contrast similarity).
* ``tune_engine`` -- the engine alone with one ``EngineConfig`` on chosen LUMIR-like pairs (tuning tables).
* ``ablation`` -- the instance-optimisation cascade's ablation on real pairs.

Run time, memory and the pipeline:

* ``deadline`` -- does every pair of ``predict.py`` keep its budget?
* ``throughput`` -- ``predict.py`` with and without overlapped reading and writing; gzip levels.
* ``vfa`` -- full-size VFA forward: time and peak memory.
* ``brainid`` -- Brain-ID synthetic-T1 inference: time and peak memory.
* ``gpu_check`` -- every GPU figure in one JSON (``bash bench/gpu_check.sh``; ``--smoke`` on the CPU).
* ``calibrate_gate`` -- the contrast gate's calibration (writes ``docs/gate_calibration.md``).

Shared pieces (paths, output stamping, worker subprocesses, the ``predict.py`` command, Dice and the evaluator's
scores, Markdown tables, common flags) live in ``common``.
"""
