"""Text in, packed token batches out: readers, tokenizers, the builtin corpus, the Grain pipeline."""
