"""The file layer under curation and training."""
