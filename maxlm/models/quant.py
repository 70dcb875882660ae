"""A frozen projection held in fewer bits (lora.base_dtype), and back to f32 where it is used.

Each function takes one layer's projection w [in..., out...] whose first `n_in` dims are inputs; a stacked
leaf [L, ...] goes through jax.vmap. Held as (values, scale), the scale stored beside w as `<name>_scale`:
- int8: values int8 [in..., out...], scale f32 [1 per input dim, out...]: max |w| over the inputs / 127.
- nf4 (QLoRA's 4-bit NormalFloat): codes uint8 [in..., last input / 2, out...], two 4-bit codes a byte (the even
  input in the low nibble), and scale f32 [I / block, out...]: each block of `lora.nf4_block` consecutive
  (flattened) inputs of an output channel shares its absmax. These are the groups bitsandbytes forms on
  Hugging Face's [out, in] rows; the code values are QLoRA's.
Letters: I a projection's inputs (flattened), O its outputs (flattened), G blocks (I / block).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.config import LoraConfig

QUANTIZED = ("int8", "nf4")  # the lora.base_dtype values that quantize (the others cast)
SCALE = "_scale"  # the suffix of a quantized projection's scale leaf
# NF4: the normal quantiles at 8 even steps from 1 - δ to 1/2 (the positive codes) and 7 (the negative ones),
# δ = (1/30 + 1/32) / 2, joined with one 0 and divided by the largest (QLoRA, Dettmers et al. 2023, §3).
NF4 = np.array([-1.00000000, -0.69619281, -0.52507296, -0.39491743, -0.28444131, -0.18477340, -0.09104998, 0.00000000,
                0.07958031, 0.16093014, 0.24611225, 0.33791514, 0.44070973, 0.56261689, 0.72295664, 1.00000000], np.float32)


def quantize(w_IxO: jax.Array, n_in: int, lora: LoraConfig) -> tuple[jax.Array, jax.Array]:
    """Returns (values, scale) of one layer's projection as lora.base_dtype (int8 or nf4) holds it."""
    w = w_IxO.astype(jnp.float32)
    if lora.base_dtype == "int8":
        scale = jnp.max(jnp.abs(w), axis=tuple(range(n_in)), keepdims=True) / 127.0
        scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero channel stays zero
        return jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8), scale
    if lora.base_dtype != "nf4":
        raise ValueError(f"lora.base_dtype {lora.base_dtype!r} does not quantize; valid: {', '.join(QUANTIZED)}")
    in_shape, out_shape = w.shape[:n_in], w.shape[n_in:]
    n, block = math.prod(in_shape), lora.nf4_block
    w_GxBxO = w.reshape(n // block, block, -1)
    absmax_GxO = jnp.max(jnp.abs(w_GxBxO), axis=1)
    x = w_GxBxO / jnp.where(absmax_GxO > 0, absmax_GxO, 1.0)[:, None, :]
    # The nearest code: the count of midpoints between neighbouring codes that lie below x.
    codes_IxO = jnp.searchsorted(jnp.asarray((NF4[1:] + NF4[:-1]) / 2), x).astype(jnp.uint8).reshape(n, -1)
    pairs = codes_IxO.reshape(n // 2, 2, -1)
    packed = pairs[:, 0] | (pairs[:, 1] << 4)
    return packed.reshape(*in_shape[:-1], in_shape[-1] // 2, *out_shape), absmax_GxO.reshape(-1, *out_shape)


def dequantize(values: jax.Array, scale: jax.Array, n_in: int) -> jax.Array:
    """Returns one layer's projection [in..., out...] in f32 from `quantize`'s (values, scale); int8 or nf4 by values' dtype."""
    if values.dtype == jnp.int8:
        return values.astype(jnp.float32) * scale.astype(jnp.float32)
    in_shape = (*values.shape[: n_in - 1], 2 * values.shape[n_in - 1])
    out_shape = values.shape[n_in:]
    packed = values.reshape(-1, math.prod(out_shape))
    codes_IxO = jnp.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1, packed.shape[-1])
    groups = scale.shape[0]
    w_GxBxO = jnp.asarray(NF4)[codes_IxO].reshape(groups, -1, packed.shape[-1]) * scale.reshape(groups, 1, -1).astype(jnp.float32)
    return w_GxBxO.reshape(*in_shape, *out_shape)


def held_shapes(in_shape: tuple[int, ...], out_shape: tuple[int, ...], lora: LoraConfig) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Returns the (values, scale) shapes and dtypes of one layer's [in..., out...] projection held as lora.base_dtype."""
    w = jax.ShapeDtypeStruct((*in_shape, *out_shape), jnp.float32)
    return jax.eval_shape(lambda x: quantize(x, len(in_shape), lora), w)
