"""`maxlm eval`: held-out measurements of trained models."""
