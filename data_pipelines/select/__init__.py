"""Data selection over SFT records: coverage (kcenter), uncertainty (perplexity, IFD), disagreement, rm_filter."""
