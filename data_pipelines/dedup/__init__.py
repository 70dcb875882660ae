"""Corpus-wide deduplication: exact (normalized-text hash) and near (MinHash LSH), resolved by
spilling sorted bucket keys to disk, merging them range by range, and taking connected components."""
