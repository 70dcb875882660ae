"""The next-token loss against a numpy re-derivation, incl. packing and masks."""

import jax.numpy as jnp
import numpy as np

from maxlm.train.losses import next_token_loss


def numpy_loss(logits, tokens, seg, mask, z):
    nll = zs = count = 0.0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if seg[b, t + 1] == 0 or seg[b, t + 1] != seg[b, t] or mask[b, t + 1] == 0:
                continue
            row = logits[b, t].astype(np.float64)
            logz = np.log(np.exp(row - row.max()).sum()) + row.max()
            nll += logz - row[tokens[b, t + 1]]
            zs += z * logz**2
            count += 1
    return nll, zs, count


def test_matches_numpy_with_packing_and_masks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 9, 11)).astype(np.float32) * 3
    tokens = rng.integers(0, 11, size=(2, 9)).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 3, 3, 3, 3]], np.int32)
    mask = np.ones((2, 9), np.float32)
    mask[1, 2] = 0  # e.g. a prompt token in SFT
    out = next_token_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(mask), z_loss=1e-4)
    nll, zs, count = numpy_loss(logits, tokens, seg, mask, 1e-4)
    assert float(out["count"]) == count == 11  # 5 in row 0, 6 in row 1
    np.testing.assert_allclose(float(out["nll_sum"]), nll, rtol=1e-5)
    np.testing.assert_allclose(float(out["z_sum"]), zs, rtol=1e-5)
