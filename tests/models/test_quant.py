"""Quantized frozen projections: NF4's code values are QLoRA's normal quantiles, a round trip lands on the nearest code
(its error within half a code gap of each block's absmax), two codes pack a byte, int8 within half a step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from maxlm.config import LoraConfig
from maxlm.models import quant

NF4 = LoraConfig(rank=4, base_dtype="nf4", nf4_block=16)
INT8 = dataclasses.replace(NF4, base_dtype="int8")


def test_nf4_codes_are_qlora_normal_quantiles():
    # QLoRA §3: quantiles of N(0, 1) over 2^(k-1) + 1 = 9 steps for the positive half and 2^(k-1) = 8 for the negative,
    # from 1 - δ to 1/2 (δ halfway between the half-steps of 15 and 16 bins, as the ends' quantiles are infinite),
    # one of the two zeros dropped, normalized into [-1, 1].
    delta = (1 / 30 + 1 / 32) / 2
    positive = norm.ppf(np.linspace(1 - delta, 0.5, 9)[:-1])
    negative = -norm.ppf(np.linspace(1 - delta, 0.5, 8)[:-1])
    derived = np.sort(np.concatenate([negative, [0.0], positive]))
    derived /= derived.max()
    assert quant.NF4.shape == (16,) and quant.NF4.dtype == np.float32
    np.testing.assert_allclose(quant.NF4, derived, rtol=0, atol=1e-7)
    assert quant.NF4[0] == -1 and quant.NF4[7] == 0 and quant.NF4[-1] == 1 and np.all(np.diff(quant.NF4) > 0)


def nearest_nf4(w_IxO: np.ndarray, block: int) -> np.ndarray:
    """Returns w with each value replaced by the nearest of absmax · NF4 in its block (brute force: argmin over the 16 codes)."""
    i, o = w_IxO.shape
    w = w_IxO.reshape(i // block, block, o)
    absmax = np.abs(w).max(axis=1, keepdims=True)
    codes = np.abs(w[..., None] / absmax[..., None] - quant.NF4).argmin(axis=-1)
    return (quant.NF4[codes] * absmax).reshape(i, o)


def test_nf4_round_trip_is_the_nearest_code_within_half_a_gap_of_the_block_absmax():
    w = np.random.default_rng(0).standard_normal((64, 3, 5)).astype(np.float32)  # [D, N, H]: one input dim
    values, scale = quant.quantize(jnp.asarray(w), 1, NF4)
    back = np.asarray(quant.dequantize(values, scale, 1))
    assert back.shape == w.shape and back.dtype == np.float32
    np.testing.assert_allclose(back.reshape(64, 15), nearest_nf4(w.reshape(64, 15), 16), rtol=0, atol=1e-6)
    absmax = np.abs(w.reshape(4, 16, 15)).max(axis=1, keepdims=True)
    half_gap = np.diff(quant.NF4).max() / 2  # 0.152: between -1 and the next code
    err = np.abs(back - w).reshape(4, 16, 15)
    assert np.all(err <= half_gap * absmax + 1e-6)
    # Each block's largest |w| is held exactly (its code is ±1).
    np.testing.assert_allclose(np.abs(back).reshape(4, 16, 15).max(axis=1, keepdims=True), absmax, rtol=1e-6)
    rel = np.sqrt(np.mean((back - w) ** 2) / np.mean(w**2))
    print(f"nf4 (block 16) round trip of N(0, 1) weights: rms error {rel:.3f} of the rms weight")
    assert rel < 0.12


def test_nf4_packs_two_codes_a_byte_along_the_last_input_and_one_absmax_a_block():
    # o's layout [N, H, D]: two input dims; blocks run over the flattened N · H inputs, across heads.
    rng = np.random.default_rng(1)
    n, h, d, block = 4, 8, 6, 16
    codes = rng.integers(0, 16, (n * h, d))
    codes[::block] = 15  # each block holds a 1.0 code: its absmax is its scale exactly
    absmax = rng.uniform(0.5, 2.0, (n * h // block, d)).astype(np.float32)
    w = (quant.NF4[codes].reshape(n * h // block, block, d) * absmax[:, None, :]).reshape(n, h, d)
    values, scale = quant.quantize(jnp.asarray(w), 2, NF4)
    assert values.shape == (n, h // 2, d) and values.dtype == jnp.uint8
    assert scale.shape == (n * h // block, d) and scale.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(scale), absmax, rtol=1e-6)
    packed = np.asarray(values).reshape(n * h // 2, d)
    np.testing.assert_array_equal(packed, codes[0::2] | (codes[1::2] << 4))  # the even input in the low nibble
    np.testing.assert_allclose(np.asarray(quant.dequantize(values, scale, 2)), w, rtol=1e-6)
    assert quant.held_shapes((n, h), (d,), NF4) == (jax.ShapeDtypeStruct(values.shape, values.dtype),
                                                     jax.ShapeDtypeStruct(scale.shape, scale.dtype))


def test_an_all_zero_block_or_channel_stays_zero():
    w = np.random.default_rng(2).standard_normal((32, 4)).astype(np.float32)
    w[:16, 1] = 0.0
    w[:, 3] = 0.0
    for cfg in (NF4, INT8):
        back = np.asarray(quant.dequantize(*quant.quantize(jnp.asarray(w), 1, cfg), 1))
        assert np.all(np.isfinite(back)) and np.all(back[:16, 1] == 0) and np.all(back[:, 3] == 0)


@pytest.mark.parametrize("n_in, shape", [(1, (32, 4, 8)), (2, (4, 8, 32))])
def test_int8_is_within_half_a_step_per_output_channel(n_in, shape):
    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    values, scale = quant.quantize(jnp.asarray(w), n_in, INT8)
    assert values.dtype == jnp.int8 and scale.shape == (*(1,) * n_in, *shape[n_in:])
    step = np.abs(w).max(axis=tuple(range(n_in)), keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(scale), step, rtol=1e-6)
    assert np.all(np.abs(np.asarray(quant.dequantize(values, scale, n_in)) - w) <= step / 2 + 1e-7)


@pytest.mark.parametrize("block", [64, 32])  # bitsandbytes takes blocks of 32 to 4096
def test_nf4_equals_bitsandbytes_quantize_4bit(block):
    # QLoRA's own implementation on Hugging Face's [out, in] weights: the same blocks, absmax and codes, so the same weights.
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    cfg = dataclasses.replace(NF4, nf4_block=block)
    rng = np.random.default_rng(0)
    for n_in, w_IxO in [(1, rng.standard_normal((128, 48))), (2, rng.standard_normal((4, 32, 40)))]:  # a projection; o's [N, H, D]
        w_IxO = w_IxO.astype(np.float32)
        hf_OxI = torch.from_numpy(w_IxO.reshape(-1, w_IxO.shape[-1]).T.copy())
        packed, state = functional.quantize_4bit(hf_OxI, blocksize=block, quant_type="nf4", compress_statistics=False)
        theirs = functional.dequantize_4bit(packed, state).numpy().T.reshape(w_IxO.shape)
        values, scale = quant.quantize(jnp.asarray(w_IxO), n_in, cfg)
        # bitsandbytes' absmax runs over the flattened [out, in] rows: block b of output o is our scale [b, o]
        np.testing.assert_array_equal(np.asarray(scale).reshape(-1, w_IxO.shape[-1]).T.reshape(-1), state.absmax.numpy())
        np.testing.assert_allclose(np.asarray(quant.dequantize(values, scale, n_in)), theirs, rtol=1e-6, atol=0)
