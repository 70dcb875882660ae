"""Synthetic post-training data from a model: Self-Instruct tasks and Constitutional critique-and-revise pairs."""
