"""The benchmark harness and the ``moil`` command, built on the library (which never
imports it).

One concept per module:

* :mod:`~moil.harness.config` — TOML configs ⇄ typed, validated specs;
* :mod:`~moil.harness.build` — specs → data, backbone, approximation, momentum, recipe;
* :mod:`~moil.harness.batches` — the training stream and the fixed evaluation batches;
* :mod:`~moil.harness.scoring` — every candidate of a run on each split, with its stored size;
* :mod:`~moil.harness.metrics_log` — ``metrics.jsonl``, safe to resume;
* :mod:`~moil.harness.memory` — peak memory of a run;
* :mod:`~moil.harness.imitation` — how close each student came to its target;
* :mod:`~moil.harness.run` — one run: train, score, write its folder;
* :mod:`~moil.harness.jobs` — a grid's jobs and the in-process runner;
* :mod:`~moil.harness.workers` — jobs in worker processes; torch's thread count;
* :mod:`~moil.harness.schedule` — running a grid's jobs: resume, and the seed runs a sweep unlocks;
* :mod:`~moil.harness.grid` — sweeps and seed runs (an arm's seeds after its own sweep), and their summary;
* :mod:`~moil.harness.report` — ``report.md`` and its plots;
* :mod:`~moil.harness.cli` — the ``moil`` command;
* :mod:`~moil.harness.data` — the offline demo data; ``configs/`` — the built-in configs.
"""
