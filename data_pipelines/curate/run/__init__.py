"""Running a pipeline: plan phases, process shards with an executor, resolve dedup, resume."""
