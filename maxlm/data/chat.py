"""Chat templates and loss masks: conversations in, token ids out, with 1 where the model learns.

Templates (`template` arguments name one):
- `default`: plain-text role markers any tokenizer encodes, `<s><|user|>\\n...</s><|assistant|>\\n...</s>`,
  where `<s>` and `</s>` are the tokenizer's BOS and EOS ids (BOS left out when it has none):
  a turn ends with EOS, the token the sampler already stops on.
- `llama3`: Meta Llama 3 Instruct, as its official Jinja template renders it (contents trimmed).
- `chatml`: Qwen2's ChatML, including its default system prompt when the first message is not one.
- `hf`: the tokenizer's own Jinja `chat_template` (Hugging Face tokenizers only). Assistant spans
  are found by rendering prefixes: the conversation up to an assistant turn with the generation
  prompt, then with that turn, and diffing the strings (templates without `{% generation %}`
  tags, most of them, cannot report spans themselves). A template that renders a prefix of a
  conversation differently from the start of the whole (one that drops earlier reasoning, or
  adds EOS only at the end) fails with a clear error.

The loss mask is 1 on every assistant message's content and its end-of-turn marker (so the
model learns to stop), 0 elsewhere. Encoding is piecewise so the mask is exact: the rendered
conversation is cut where the mask changes and each run is encoded on its own, so no token
straddles a boundary. Runs are otherwise whole, so ids equal the tokenizer's encoding of the
rendered text except where the tokenizer would merge across the start or end of an assistant
reply (a chatml reply that starts with a newline, say). The prompt for generation is exactly
the ids before the reply, so sampling continues where training started.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from maxlm.data.tokenizers import HFTokenizer, Tokenizer
from maxlm.errors import MaxlmError

Message = dict[str, str]
Segments = list[tuple[str, bool]]  # (text, trained) runs of a rendered conversation


class Special(str):
    """A template piece that stands for a token id of the tokenizer (BOS, EOS), not for text."""


BOS, EOS = Special("<s>"), Special("</s>")
SPECIAL_TEXT = (BOS, EOS)  # how render_chat shows them
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(p) for p in SPECIAL_TEXT) + ")")


@dataclass(frozen=True)
class Template:
    """The layout of a built-in template; `{role}` in `header` is replaced by the message's role."""

    begin: str  # before the first message
    header: str  # opens a turn
    end: str  # closes a turn; trained after assistant content
    sep: str = ""  # after `end`, not trained
    trim: bool = False  # contents stripped of surrounding whitespace, as Llama 3's template does
    default_system: str = ""  # a system message put first when the conversation has none


TEMPLATES = {
    "default": Template(begin=BOS, header="<|{role}|>\n", end=EOS),
    "llama3": Template(
        begin="<|begin_of_text|>", header="<|start_header_id|>{role}<|end_header_id|>\n\n", end="<|eot_id|>", trim=True
    ),
    "chatml": Template(
        begin="", header="<|im_start|>{role}\n", end="<|im_end|>", sep="\n", default_system="You are a helpful assistant."
    ),
}
TEMPLATE_NAMES = (*TEMPLATES, "hf")


def encode_chat(
    tokenizer: Tokenizer, template: str, messages: Sequence[Message], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Returns (ids, loss_mask): mask 1 on assistant contents and their end-of-turn markers."""
    return _encode(tokenizer, segments(tokenizer, template, messages, add_generation_prompt))


def encode_prompt(tokenizer: Tokenizer, template: str, prompt: str | Sequence[Message]) -> list[int]:
    """Returns the ids of a prompt rendered up to the assistant header, for the sampler."""
    return encode_chat(tokenizer, template, _as_messages(prompt), add_generation_prompt=True)[0]


def encode_completion(
    tokenizer: Tokenizer, template: str, prompt: str | Sequence[Message], completion: str
) -> tuple[list[int], list[int]]:
    """Returns (ids, completion_mask) of prompt + one assistant reply; mask 1 on the reply and its end marker."""
    messages = _as_messages(prompt) + [{"role": "assistant", "content": completion}]
    ids, mask = encode_chat(tokenizer, template, messages)
    # The reply is the last trained run; earlier assistant turns belong to the prompt.
    start = len(mask) - next(i for i, m in enumerate(reversed(mask)) if m)
    while start > 0 and mask[start - 1]:
        start -= 1
    return ids, [0] * start + mask[start:]


def encode_pair(
    tokenizer: Tokenizer, template: str, prompt: str | Sequence[Message], chosen: str, rejected: str
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """Returns ((chosen ids, mask), (rejected ids, mask)) for rm and dpo; masks 1 on the completions."""
    return encode_completion(tokenizer, template, prompt, chosen), encode_completion(tokenizer, template, prompt, rejected)


def fit_prompt(
    tokenizer: Tokenizer, template: str, prompt: str | Sequence[Message], completions: Sequence[str], max_len: int
) -> tuple[list[Message], bool]:
    """Returns (prompt, cut): the prompt, its earliest text removed until prompt + each completion is <= max_len tokens.

    The left truncation of reward models and pairs, which keeps the completions whole and the
    template's structure intact. Leading system messages stay; the earliest other message loses
    tokens from the start of its text, or goes whole when all of its text is not enough (with the
    assistant turns right after it, so what is left still opens with a user turn). Every kept
    message keeps its header and end-of-turn marker: the model reads a real conversation that
    starts later. A prompt that fits comes back unchanged (cut=False). When the completions do not
    fit even after an empty last turn, that shortest prompt comes back and the caller sees the
    conversation is still too long.
    """
    messages = _as_messages(prompt)

    def excess(msgs: list[Message]) -> int:
        return max(len(encode_completion(tokenizer, template, msgs, c)[0]) for c in completions) - max_len

    over = excess(messages)
    if over <= 0:
        return messages, False
    n_system = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    system, turns = messages[:n_system], messages[n_system:]
    while over > 0 and turns and (len(turns) > 1 or turns[0]["content"]):
        text = turns[0]["content"]
        ids = _encode_text(tokenizer, text)
        if len(turns) > 1 and len(ids) <= over:
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] != "user":
                turns = turns[1:]
        else:
            # Cut by tokens of the text alone: in context it may encode a token or two differently,
            # which the next round measures and cuts again.
            kept = tokenizer.decode(ids[over:]) if len(ids) > over else ""
            turns = [{**turns[0], "content": kept if len(kept) < len(text) else text[1:]}, *turns[1:]]
        over = excess(system + turns)
    return system + turns, True


def render_chat(tokenizer: Tokenizer, template: str, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """Returns the conversation as the template renders it (BOS/EOS ids of `default` shown as <s>, </s>)."""
    return "".join(text for text, _ in segments(tokenizer, template, messages, add_generation_prompt))


def stop_ids(tokenizer: Tokenizer, template: str) -> list[int]:
    """Returns the ids that end an assistant turn (its marker when one token, and EOS): the sampler's stop_ids."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    trained = [piece for piece, t in segments(tokenizer, template, probe) if t]
    if isinstance(trained[-1], Special):
        found = [_special_id(tokenizer, trained[-1])]
    else:
        text = "".join(trained)
        ids = _encode_text(tokenizer, text[text.index("Hello") + len("Hello"):])
        found = ids if len(ids) == 1 else []  # a marker of several tokens needs a stop on text
    return found + ([tokenizer.eos_id] if tokenizer.eos_id >= 0 and tokenizer.eos_id not in found else [])


def segments(tokenizer: Tokenizer, template: str, messages: Sequence[Message], add_generation_prompt: bool = False) -> Segments:
    """Returns the rendered conversation as (text, trained) runs; BOS/EOS pieces are `Special`."""
    if not messages:
        raise MaxlmError("a chat needs at least one message")
    if template == "hf":
        return _hf_segments(tokenizer, list(messages), add_generation_prompt)
    if template not in TEMPLATES:
        raise MaxlmError(f"chat template must be one of {', '.join(TEMPLATE_NAMES)}, got {template!r}")
    t = TEMPLATES[template]
    if t.default_system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": t.default_system}, *messages]
    # A tokenizer without BOS (most HF ones) starts the default template at the first header.
    runs = [] if t.begin is BOS and tokenizer.bos_id < 0 else [(t.begin, False)]
    for m in messages:
        trained = m["role"] == "assistant"
        content = m["content"].strip() if t.trim else m["content"]
        runs += [(t.header.replace("{role}", m["role"]), False), (content, trained), (t.end, trained), (t.sep, False)]
    if add_generation_prompt:
        runs.append((t.header.replace("{role}", "assistant"), False))
    return [r for r in runs if r[0]]


def jinja_template(template: str) -> str | None:
    """Returns a built-in template as a Jinja `chat_template` that renders what `render_chat` renders (None for hf).

    Written into exported tokenizers, so transformers, vLLM or lm-eval's `hf` model prompt an
    exported model exactly as maxlm trained it.
    """
    if template == "hf":
        return None
    t = TEMPLATES[template]

    def piece(p: str) -> str:
        if p is BOS:  # left out when the tokenizer has none, as segments() does
            return "{% if bos_token %}{{ bos_token }}{% endif %}"
        if p is EOS:
            return "{{ eos_token }}"
        return "{{ " + json.dumps(p) + " }}" if p else ""

    def header(role: str) -> str:
        before, _, after = t.header.partition("{role}")
        return piece(before) + role + piece(after)

    content = "{{ message['content'] | trim }}" if t.trim else "{{ message['content'] }}"
    out = piece(t.begin)
    if t.default_system:
        out += ("{% if messages[0]['role'] != 'system' %}" + header(piece("system")) + piece(t.default_system)
                + piece(t.end) + piece(t.sep) + "{% endif %}")
    out += "{% for message in messages %}" + header("{{ message['role'] }}") + content + piece(t.end) + piece(t.sep) + "{% endfor %}"
    return out + "{% if add_generation_prompt %}" + header(piece("assistant")) + "{% endif %}"


def _encode(tokenizer: Tokenizer, runs: Segments) -> tuple[list[int], list[int]]:
    """Returns (ids, mask) encoding each maximal run of equal `trained` as one text."""
    ids, mask = [], []
    for trained, group in itertools.groupby(runs, key=lambda r: r[1]):
        text = ""
        for piece, _ in group:
            if isinstance(piece, Special):
                new = _encode_text(tokenizer, text) + [_special_id(tokenizer, piece)]
                text = ""
            else:
                new, text = [], text + piece
            ids += new
            mask += [int(trained)] * len(new)
        new = _encode_text(tokenizer, text)
        ids += new
        mask += [int(trained)] * len(new)
    return ids, mask


def encode_rendered(tokenizer: Tokenizer, text: str) -> list[int]:
    """Returns the ids of text as render_chat shows a conversation: its <s> / </s> pieces as the BOS / EOS ids,
    the text between them encoded whole (as an HF tokenizer reads its special tokens)."""
    ids = []
    for part in _SPECIAL_SPLIT.split(text):
        if part in SPECIAL_TEXT:
            ids.append(_special_id(tokenizer, BOS if part == BOS else EOS))
        else:
            ids += _encode_text(tokenizer, part)
    return ids


def _encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text) if text else []


def _special_id(tokenizer: Tokenizer, piece: Special) -> int:
    token = tokenizer.bos_id if piece is BOS else tokenizer.eos_id
    if token < 0:
        raise MaxlmError(
            f"{tokenizer.path}: the tokenizer has no {'BOS' if piece is BOS else 'EOS'} token, which chat template "
            "default needs; use a template with its own markers (llama3, chatml, hf)"
        )
    return token


def _as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


# ---------------------------------------------------------------- the tokenizer's own template


def _hf_segments(tokenizer: Tokenizer, messages: list[Message], add_generation_prompt: bool) -> Segments:
    """Returns runs of the HF chat template's rendering, assistant spans found by diffing prefixes."""
    hf = getattr(tokenizer, "_tok", None) if isinstance(tokenizer, HFTokenizer) else None
    if hf is None or not getattr(hf, "chat_template", None):
        raise MaxlmError(
            f"{tokenizer.path or type(tokenizer).__name__}: chat template hf needs a Hugging Face tokenizer with a "
            "chat_template; use default, llama3 or chatml"
        )

    def render(msgs: list[Message], generation: bool) -> str:
        try:
            return hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
        except Exception as e:  # jinja2 errors and the template's own raise_exception
            raise MaxlmError(f"{tokenizer.path}: its chat_template fails on a {len(msgs)}-message conversation: {e}") from None

    def diverged(what: str) -> MaxlmError:
        return MaxlmError(
            f"{tokenizer.path}: its chat_template renders {what} differently from the start of the whole "
            "conversation, so assistant spans cannot be found by prefix; use default, llama3 or chatml"
        )

    runs, done = [], ""  # `done`: the rendered text already cut into runs
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not head.startswith(done) or not turn.startswith(head):
            raise diverged(f"the prefix before message {i}")
        reply = turn[len(head):]
        at, content = next(((reply.find(c), c) for c in (m["content"], m["content"].strip()) if c in reply), (-1, ""))
        if at < 0:
            raise MaxlmError(f"{tokenizer.path}: its chat_template changes the content of assistant message {i}; cannot mask it")
        # What follows the content up to trailing whitespace is the end-of-turn marker ("<|im_end|>" of "<|im_end|>\n").
        end = reply[at + len(content):].rstrip()
        runs += [(head[len(done):] + reply[:at], False), (content + end, True)]
        done = head + reply[: at + len(content) + len(end)]
    full = render(messages, add_generation_prompt)
    if not full.startswith(done):
        raise diverged("an assistant turn")
    runs.append((full[len(done):], False))
    return [r for r in runs if r[0]]
