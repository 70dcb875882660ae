"""Generation tasks: greedy completions of prompt records with the one sampler, scored by a verifier.

Prompts are rendered as the model was trained: with the run's chat template up to the
assistant header, or, for pretrain runs (and HF imports), as plain text after BOS.
Generation stops at the template's end-of-turn ids (pretrain: EOS); the completion is the
decoded text before the first stop. Prompts that leave fewer than `max_new_tokens` slots in
model.max_seq_len are skipped and counted; malformed records are errors naming file:line, or
with on_bad_record="skip" are dropped and counted (`bad_records`).
"""

from __future__ import annotations

from collections.abc import Sequence

from maxlm.data.records import Prompt, read_records
from maxlm.errors import MaxlmError
from maxlm.infer.buckets import pow2_ceil
from maxlm.infer.pretrained import Pretrained, prompt_text
from maxlm.tasks.rl.verifiers import VERIFIERS, verifier

EXACT = "exact"  # the completion equals the gold answer, surrounding whitespace aside
EXAMPLES = 3  # records shown in the result, with their completion and gold answer

Messages = Sequence[dict[str, str]]


def exact(completion: str, answer: str) -> float:
    """Returns 1.0 if the completion is the answer (ignoring surrounding whitespace), else 0.0."""
    return float(completion.strip() == answer.strip())


def answer_check(name: str):
    """Returns the named check: `exact`, or a verifier of maxlm.tasks.rl.verifiers (gsm8k_exact, ...)."""
    if name == EXACT:
        return exact
    if name not in VERIFIERS:
        raise MaxlmError(f"--verifier must be one of {', '.join([EXACT, *sorted(VERIFIERS)])}, got {name!r}")
    return verifier(name)


def greedy_completions(model: Pretrained, prompts: Sequence[Messages], max_new_tokens: int, batch_size: int = 16) -> list[str | None]:
    """Returns each prompt's greedy completion text, None where the prompt leaves no room for max_new_tokens."""
    if batch_size < 1 or max_new_tokens < 1:
        raise MaxlmError(f"--batch-size and --max-new-tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    room = model.config.model.max_seq_len - max_new_tokens
    if room < 1:
        limit = model.config.model.max_seq_len
        raise MaxlmError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in model.max_seq_len={limit}")
    ids, stops = model.encode_prompts(prompts)
    keep = [i for i, x in enumerate(ids) if len(x) <= room]
    out: list[str | None] = [None] * len(ids)
    if not keep:
        return out
    # One shape for every batch: prompts left-padded to the longest rounded up to a power of two,
    # rows a power of two up to batch_size, so the sampler compiles once.
    pad_to = min(pow2_ceil(max(len(ids[i]) for i in keep)), room)
    rows = min(batch_size, pow2_ceil(len(keep)))
    done = model.generate_batched([ids[i] for i in keep], max_new_tokens, stop_ids=stops, batch_size=rows, prompt_len=pad_to)
    for i, text in zip(keep, done.texts):
        out[i] = text
    return out


def exact_match(
    model: Pretrained, path: str, check: str = "gsm8k_exact", max_new_tokens: int = 256, rows: str = "", batch_size: int = 16,
    on_bad_record: str = "error",
) -> dict:
    """Returns {"accuracy", "n", "skipped", "bad_records", "verifier", "examples"} of greedy answers to the records in `path`.

    Records are `{"prompt", "answer"}` or gsm8k `{"question", "answer"}` (its final number
    is the gold); accuracy is the verifier's mean score over the records that fit.
    """
    verify = answer_check(check)
    records, bad = read_prompts(path, rows, on_bad_record)
    missing = [r for r in records if r.answer is None]
    if missing and on_bad_record == "error":
        raise MaxlmError(f"{missing[0].where}: no 'answer' to check the completion against")
    records, bad = [r for r in records if r.answer is not None], bad + len(missing)
    if not records:
        raise MaxlmError(f"{path}: no record has an 'answer' to check")
    completions = greedy_completions(model, [r.prompt for r in records], max_new_tokens, batch_size)
    done = [(r, c) for r, c in zip(records, completions) if c is not None]
    if not done:
        limit = model.config.model.max_seq_len
        raise MaxlmError(f"{path}: every prompt is too long for model.max_seq_len={limit} with --max-new-tokens {max_new_tokens}")
    scores = [verify(c, r.answer) for r, c in done]
    examples = [{"prompt": prompt_text(r.prompt), "completion": c, "gold": r.answer, "score": s}
                for (r, c), s in zip(done[:EXAMPLES], scores)]
    return {
        "accuracy": sum(scores) / len(scores), "n": len(done), "skipped": len(records) - len(done), "bad_records": bad,
        "verifier": check, "max_new_tokens": max_new_tokens, "examples": examples,
    }


def read_prompts(path: str, rows: str = "", on_bad_record: str = "error") -> tuple[list[Prompt], int]:
    """Returns (the prompt records of `path` in `rows`, how many malformed records were skipped), read like grpo prompts."""
    return read_records(path, "grpo", on_bad_record, rows=rows)
