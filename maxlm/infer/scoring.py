"""A model's opinion of token sequences: summed log-probs over a mask, mean-pooled embeddings, rewards.

The one scorer for every tool that reads a model's view of text (data selection, the
perplexity curation stage, evaluation). Sequences of any length go in as lists of ids; they
are sorted into length buckets (powers of two from `MIN_BUCKET` up to model.max_seq_len)
and batched to about `batch_tokens` tokens, rows a power of two, so each of the three jitted
functions compiles for a handful of shapes however many sequences are scored. Padding is on
the right with segment id 0, so no real token attends to it and results do not depend on it.
Letters: B batch, T length, D model, V vocab, N sequences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from maxlm.errors import MaxlmError
from maxlm.losses.logprobs import next_targets, next_token_weights, sequence_logps, token_logprobs
from maxlm.losses.preference import pool_scores
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.infer.buckets import pow2_ceil, pow2_floor
from maxlm.infer.pretrained import Pretrained
from maxlm.tasks import require_reward_model

MIN_BUCKET = 64  # shortest padded length: shorter buckets would only add compiles


def perplexity(logp_sum, count) -> np.ndarray:
    """Returns exp(-sum / count) per sequence, NaN where nothing was scored."""
    logp_sum, count = np.asarray(logp_sum, np.float64), np.asarray(count, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.exp(-logp_sum / np.maximum(count, 1)), np.nan)


class Scorer:
    """Scores token sequences with a Pretrained model under its mesh, in length-bucketed batches."""

    def __init__(self, model: Pretrained, batch_tokens: int = 16384):
        if batch_tokens < 1:
            raise MaxlmError(f"batch_tokens must be >= 1, got {batch_tokens}")
        self.model, self.batch_tokens = model, batch_tokens
        self.max_len = model.config.model.max_seq_len
        g = model.graphdef
        # Per-row results replicated: every process of a multi-process mesh can read all of them.
        whole = NamedSharding(model.mesh, PartitionSpec())
        self._logprobs = jax.jit(partial(_logprobs, g), out_shardings=whole)
        self._embed = jax.jit(partial(_embed, g), static_argnames="normalize", out_shardings=whole)
        self._rewards = jax.jit(partial(_rewards, g, pooling=model.config.rm.pooling), out_shardings=whole)
        self._continuations = jax.jit(partial(_continuations, g), out_shardings=whole)

    def logprobs(self, ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (summed log p [N] f64, token counts [N] f64) over the tokens where each mask is 1.

        Token t is scored as log p(ids[t] | ids[:t]); the first token has no context and is
        never scored. No mask scores every token after the first.
        """
        out = self._run(self._logprobs, ids, masks, 2)
        return out[0].astype(np.float64), out[1].astype(np.float64)

    def loglikelihoods(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (summed log p of each continuation given its context [N] f64, whether greedy decoding gives it [N] bool).

        As lm-eval's causal models score a request: context + continuation keeps its last
        model.max_seq_len + 1 tokens (a long context is cut from the left), the last of which is
        only predicted; every continuation token is scored from all the kept tokens before it.
        """
        if len(contexts) != len(continuations):
            raise MaxlmError(f"{len(contexts)} contexts for {len(continuations)} continuations")
        inputs, targets, masks = [], [], []
        for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
            if not ctx or not cont or len(cont) > self.max_len:
                raise MaxlmError(f"request {i}: needs a context and 1 to {self.max_len} continuation tokens, got {len(ctx)} and {len(cont)}")
            whole = [*ctx, *cont][-(self.max_len + 1):]
            inputs.append(whole[:-1])
            targets.append(whole[1:])
            # Input position t predicts targets[t]: the last len(cont) positions predict the continuation.
            masks.append([0] * (len(whole) - 1 - len(cont)) + [1] * len(cont))
        logp, greedy = self._run(self._continuations, inputs, masks, 2, targets)
        return logp.astype(np.float64), greedy.astype(bool)

    def embed(self, ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None, normalize: bool = False) -> np.ndarray:
        """Returns f32 [N, D]: the mean of the final-normed hidden states where each mask is 1 (L2-normalized if asked)."""
        if not len(ids):
            return np.zeros((0, self.model.config.model.hidden_size), np.float32)
        return self._run(partial(self._embed, normalize=normalize), ids, masks, 1)[0]

    def rewards(self, ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """Returns each sequence's reward, [N] f64 (NaN for empty ones): the scalar head at its last token,
        or (a reward model trained with rm.pooling=mean) its mean over the tokens where the mask is 1."""
        require_reward_model(self.model.config, "Scorer.rewards")
        if masks is None and self.model.config.rm.pooling == "mean":
            raise MaxlmError("this reward model pools over the reply (rm.pooling=mean): pass the reply masks")
        r = self._run(self._rewards, ids, masks, 1)[0].astype(np.float64)
        r[[len(x) == 0 for x in ids]] = np.nan
        return r

    def _run(self, fn, ids, masks, n_out: int, targets=None) -> list[np.ndarray]:
        """Returns fn's per-row outputs for every sequence, in input order (with `targets`, fn also takes them, [B, T])."""
        lengths = np.asarray([len(x) for x in ids], np.int64)
        if masks is not None and len(masks) != len(ids):
            raise MaxlmError(f"{len(masks)} masks for {len(ids)} sequences")
        too_long = np.flatnonzero(lengths > self.max_len)
        if too_long.size:
            i = int(too_long[0])
            raise MaxlmError(f"sequence {i} has {lengths[i]} tokens, more than model.max_seq_len={self.max_len}; truncate it first")
        results: list[np.ndarray | None] = [None] * n_out
        with jax.set_mesh(self.model.mesh):
            for idx, t, rows in length_batches(lengths, self.batch_tokens, self.max_len):
                tokens_BxT = np.zeros((rows, t), np.int32)  # pad id 0: segment 0 keeps it out of every result
                seg_BxT = np.zeros((rows, t), np.int32)
                mask_BxT = np.zeros((rows, t), np.float32)
                targets_BxT = np.zeros((rows, t), np.int32)
                for r, i in enumerate(idx):
                    n = lengths[i]
                    tokens_BxT[r, :n] = ids[i]
                    if targets is not None:
                        targets_BxT[r, :n] = targets[i]
                    seg_BxT[r, :n] = 1
                    if masks is None:
                        mask_BxT[r, :n] = 1
                    elif len(masks[i]) != n:
                        raise MaxlmError(f"sequence {i}: mask has {len(masks[i])} entries for {n} tokens")
                    else:
                        mask_BxT[r, :n] = masks[i]
                extra = () if targets is None else (targets_BxT,)
                out = fn(self.model.params, tokens_BxT, seg_BxT, mask_BxT, *extra)
                out = out if isinstance(out, tuple) else (out,)
                for k, o in enumerate(out):
                    o = np.asarray(o)[: len(idx)]
                    if results[k] is None:
                        results[k] = np.zeros((len(ids),) + o.shape[1:], o.dtype)
                    results[k][idx] = o
        if results[0] is None:  # no sequences
            return [np.zeros((0,), np.float32) for _ in range(n_out)]
        return results


def length_batches(lengths_N: np.ndarray, batch_tokens: int, max_len: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """Yields (sequence indices, padded length T, rows B): lengths bucketed to powers of two, B a power of two."""
    order = np.argsort(lengths_N, kind="stable")
    buckets = np.asarray([bucket_length(int(n), max_len) for n in lengths_N[order]], np.int64)
    for t in np.unique(buckets):
        members = order[buckets == t]
        cap = pow2_floor(max(1, batch_tokens // int(t)))
        for start in range(0, len(members), cap):
            idx = members[start : start + cap]
            # A short last batch is padded only up to the next power of two: few shapes, little waste.
            yield idx, int(t), min(cap, pow2_ceil(len(idx)))


def bucket_length(n: int, max_len: int) -> int:
    """Returns the padded length of an n-token sequence: a power of two >= MIN_BUCKET, at most max_len."""
    return min(max(MIN_BUCKET, pow2_ceil(n)), max(max_len, n))


# ---------------------------------------------------------------- jitted bodies (pure in params and arrays)


def _logprobs(graphdef, params, tokens_BxT, seg_BxT, mask_BxT):
    """Returns (summed log p [B], counts [B]) f32 of the masked tokens, each predicted from those before it."""
    logits_BxTxV = bind(graphdef, params)(tokens_BxT, seg_BxT)
    logp_BxT, _ = token_logprobs(logits_BxTxV, next_targets(tokens_BxT))
    return sequence_logps(logp_BxT, next_token_weights(seg_BxT, mask_BxT))


def _continuations(graphdef, params, tokens_BxT, seg_BxT, mask_BxT, targets_BxT):
    """Returns (summed log p(target) [B] f32, whether every target is the argmax [B] bool) over the masked positions."""
    logits_BxTxV = bind(graphdef, params)(tokens_BxT, seg_BxT)
    logp_BxT, _ = token_logprobs(logits_BxTxV, targets_BxT)
    w_BxT = mask_BxT * (seg_BxT > 0)
    logp_B, _ = sequence_logps(logp_BxT, w_BxT)
    hit_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
    return logp_B, jnp.all(hit_BxT | (w_BxT == 0), axis=-1)


def _hidden(graphdef, params, tokens_BxT, seg_BxT):
    model = bind(graphdef, params)
    b, t = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h_BxTxD, _ = model.hidden(tokens_BxT, positions_BxT, causal_segment_mask(seg_BxT))
    return model, h_BxTxD


def _embed(graphdef, params, tokens_BxT, seg_BxT, mask_BxT, normalize: bool):
    """Returns the masked mean of the hidden states [B, D] f32, optionally L2-normalized."""
    _, h_BxTxD = _hidden(graphdef, params, tokens_BxT, seg_BxT)
    w_BxT = mask_BxT * (seg_BxT > 0)
    sum_BxD = jnp.einsum("btd,bt->bd", h_BxTxD.astype(jnp.float32), w_BxT)
    mean_BxD = sum_BxD / jnp.maximum(jnp.sum(w_BxT, axis=-1, keepdims=True), 1.0)
    if normalize:
        mean_BxD = mean_BxD / jnp.maximum(jnp.linalg.norm(mean_BxD, axis=-1, keepdims=True), 1e-12)
    return mean_BxD


def _rewards(graphdef, params, tokens_BxT, seg_BxT, mask_BxT, pooling: str):
    """Returns each row's reward [B] f32, pooled as reward training pools it."""
    model, h_BxTxD = _hidden(graphdef, params, tokens_BxT, seg_BxT)
    return pool_scores(model.scores(h_BxTxD), seg_BxT, mask_BxT, pooling)
