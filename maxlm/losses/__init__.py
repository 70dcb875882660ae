"""Loss math: pure functions of arrays that return sums and counts (logprobs, head, preference, rl)."""
