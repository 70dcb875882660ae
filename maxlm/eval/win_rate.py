"""Win rate judged by a reward model: two policies answer the same prompts greedily, the RM scores each answer.

The RM reads prompt + answer as it was trained (its chat template, the answer as the
assistant's reply, the reward at the last token). A win counts 1, a tie 1/2: identical
answers are scored once, so they always tie. Prompts too long for either policy (with
max_new_tokens) or for the RM are skipped and counted.
"""

from __future__ import annotations

import numpy as np

from maxlm.data import chat
from maxlm.errors import MaxlmError
from maxlm.eval.generation import EXAMPLES, greedy_completions, read_prompts
from maxlm.infer.pretrained import Pretrained, prompt_text
from maxlm.infer.scoring import Scorer
from maxlm.tasks import require_reward_model


def win_rate(
    rm: Pretrained, a: Pretrained, b: Pretrained, path: str, max_new_tokens: int = 256, rows: str = "", batch_size: int = 16,
    on_bad_record: str = "error",
) -> dict:
    """Returns {"win_rate", "wins", "ties", "losses", "n", "skipped", "bad_records", "reward_a", "reward_b", "examples"} of A over B.

    Prompt records are read like grpo prompts ({"prompt"}, gsm8k, Alpaca, hh-rlhf); their answers are ignored.
    """
    require_reward_model(rm.config, "eval win-rate: --rm")
    tokenizer, template = rm.tokenizer, rm.template  # no tokenizer files: the one error, before any answer is generated
    records, bad = read_prompts(path, rows, on_bad_record)
    prompts = [r.prompt for r in records]
    answers_a = greedy_completions(a, prompts, max_new_tokens, batch_size)
    answers_b = answers_a if b is a else greedy_completions(b, prompts, max_new_tokens, batch_size)

    limit = rm.config.model.max_seq_len
    kept, unique = [], {}  # unique: RM input (ids, reply mask) -> index, so equal answers get one (equal) reward
    for i, (x, y) in enumerate(zip(answers_a, answers_b)):
        if x is None or y is None:
            continue
        pair = [tuple(map(tuple, chat.encode_completion(tokenizer, template, prompts[i], answer))) for answer in (x, y)]
        if max(len(ids) for ids, _ in pair) > limit:
            continue
        kept.append((i, [unique.setdefault(key, len(unique)) for key in pair]))
    if not kept:
        raise MaxlmError(f"{path}: every prompt is too long for the policies (with --max-new-tokens {max_new_tokens}) or the RM")
    rewards = Scorer(rm).rewards([list(ids) for ids, _ in unique], [list(mask) for _, mask in unique])
    r_a = np.asarray([rewards[ja] for _, (ja, _) in kept])
    r_b = np.asarray([rewards[jb] for _, (_, jb) in kept])
    wins, ties = int(np.sum(r_a > r_b)), int(np.sum(r_a == r_b))
    examples = [
        {"prompt": prompt_text(prompts[i]), "a": answers_a[i], "b": answers_b[i], "reward_a": float(x), "reward_b": float(y)}
        for (i, _), x, y in zip(kept[:EXAMPLES], r_a, r_b)
    ]
    return {
        "win_rate": (wins + 0.5 * ties) / len(kept), "wins": wins, "ties": ties, "losses": len(kept) - wins - ties,
        "n": len(kept), "skipped": len(records) - len(kept), "bad_records": bad,
        "reward_a": float(r_a.mean()), "reward_b": float(r_b.mean()), "max_new_tokens": max_new_tokens, "examples": examples,
    }
