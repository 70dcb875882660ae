"""The data half of maxlm: curation (curate/), data selection (select/) and synthetic data (synth/)."""
