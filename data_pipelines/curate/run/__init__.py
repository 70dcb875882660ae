"""Running a pipeline's machinery: plan phases, process shards with an executor, resolve dedup, the work directory."""
