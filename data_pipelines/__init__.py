"""Curation half of maxlm: raw documents in, filtered and deduplicated shards plus a report out."""
