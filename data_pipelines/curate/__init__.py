"""Curation: raw documents in, filtered and deduplicated shards plus a report out.

Layers, top down: cli -> pipeline (the run end to end) -> report, run/ (phases, shards,
executors, dedup resolution, the work directory) -> stages/ (one file per YAML stage name)
-> stage, inputs, document, stats, segment -> maxlm.files.
"""
