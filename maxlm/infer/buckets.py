"""Powers of two as shape buckets: batches and lengths rounded to them compile a few shapes, not one per size."""


def pow2_ceil(n: int) -> int:
    """Returns the least power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def pow2_floor(n: int) -> int:
    """Returns the greatest power of two <= n (n >= 1)."""
    return 1 << (int(n).bit_length() - 1)
