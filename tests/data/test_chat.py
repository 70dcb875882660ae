"""Chat templates: renderings and ids equal transformers' with the official Jinja templates;
loss masks cover exactly the assistant replies and their end markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxlm.data.chat import (
    encode_chat,
    encode_completion,
    encode_pair,
    encode_prompt,
    fit_prompt,
    jinja_template,
    render_chat,
    stop_ids,
)
from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece
from maxlm.errors import MaxlmError

# Test data: the official templates, from meta-llama/Meta-Llama-3-8B-Instruct and
# Qwen/Qwen2-7B-Instruct tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
# Llama 3's pre-tokenizer split, so the test tokenizer merges (or not) across boundaries as the real one does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CHATS = [
    [user("What is the capital of France?"), assistant("Paris is the capital of France.")],
    [{"role": "system", "content": "You are terse."}, user("Name two primes."), assistant("2 and 3.")],
    [user("Hello there!"), assistant("  Hi! How can I help?  "), user("Tell me a joke about cats."),
     assistant("Why did the cat sit on the computer? To keep an eye on the mouse.")],
    [user("Traduis « bonjour » en japonais."), assistant("こんにちは — c'est « bonjour ».")],
]
TRAIN_TEXT = [m["content"] for chat in CHATS for m in chat] + [
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "Tokenizers split text into pieces; a chat template lays out who said what, turn by turn.",
    "Assistant replies are what the model learns to write, and where each of them must stop.",
    "In April she sold forty-eight clips, then half as many in May: seventy-two in all.",
    "Rain in the morning, sun by noon, and a cold clear night with stars over the harbour.",
] * 8


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Returns {name: directory} of HF tokenizers (a byte-level BPE trained here) with chat templates."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TRAIN_TEXT, trainer)
    root = tmp_path_factory.mktemp("hf_tokenizers")
    layouts = {
        "llama3": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE),
        "chatml": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN2_TEMPLATE),
        # EOS only after the last turn: a prefix renders differently from the whole conversation.
        "eos_at_end": dict(eos_token="<|end_of_text|>", chat_template=(
            "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant: ' }}{% else %}{{ eos_token }}{% endif %}")),
        "none": dict(eos_token="<|end_of_text|>"),
    }
    dirs = {}
    for name, kwargs in layouts.items():
        template = kwargs.pop("chat_template", None)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **kwargs)
        if template:
            tok.chat_template = template
        tok.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="module")
def reference(hf_dirs):
    """Returns a function name -> the transformers tokenizer, loaded independently of maxlm."""
    from transformers import AutoTokenizer

    return lambda name: AutoTokenizer.from_pretrained(hf_dirs[name])


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    """Returns a 400-piece sentencepiece tokenizer trained on a few KB here."""
    return load_tokenizer(train_sentencepiece(TRAIN_TEXT, tmp_path_factory.mktemp("sp") / "chat.model", vocab_size=400))


def blocks(ids, mask):
    """Returns the runs of ids where mask is 1."""
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = runs + [run], []
    return runs + ([run] if run else [])


END = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}


@pytest.mark.parametrize("name", ["llama3", "chatml"])
@pytest.mark.parametrize("chat", CHATS, ids=["single", "system", "multi_turn", "unicode"])
def test_matches_transformers_with_the_official_template(hf_dirs, reference, name, chat):
    tok, ref = load_tokenizer(hf_dirs[name]), reference(name)
    want_text = ref.apply_chat_template(chat, tokenize=False)
    want_ids = ref.apply_chat_template(chat, tokenize=True)["input_ids"]
    assert render_chat(tok, name, chat) == want_text
    ids, mask = encode_chat(tok, name, chat)
    assert ids == want_ids
    assert ref.decode(ids, skip_special_tokens=False) == want_text
    # The mask covers each assistant reply (trimmed by Llama 3's template) plus its end marker, nothing else.
    replies = [m["content"].strip() if name == "llama3" else m["content"] for m in chat if m["role"] == "assistant"]
    assert [ref.decode(b, skip_special_tokens=False) for b in blocks(ids, mask)] == [r + END[name] for r in replies]
    # The tokenizer's own template, masked by prefix diffs, gives the same ids and mask.
    assert encode_chat(tok, "hf", chat) == (ids, mask)
    assert render_chat(tok, "hf", chat) == want_text


@pytest.mark.parametrize("name", ["llama3", "chatml", "hf"])
def test_prompt_for_generation_is_the_prefix_of_the_conversation(hf_dirs, reference, name):
    tok_dir = "llama3" if name == "hf" else name
    tok, ref = load_tokenizer(hf_dirs[tok_dir]), reference(tok_dir)
    chat = CHATS[2]
    prompt = encode_prompt(tok, name, chat[:-1])
    assert prompt == ref.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    ids, mask = encode_chat(tok, name, chat)
    assert ids[: len(prompt)] == prompt and mask[len(prompt)] == 1  # the reply starts right after the prompt
    assert encode_chat(tok, name, chat[:-1], add_generation_prompt=True)[0] == prompt
    assert encode_prompt(tok, name, "Name two primes.") == encode_prompt(tok, name, [user("Name two primes.")])


def test_pair_masks_cover_only_the_final_completions(hf_dirs, reference):
    tok, ref = load_tokenizer(hf_dirs["chatml"]), reference("chatml")
    prompt = CHATS[2][:3]  # ends with a user turn after an earlier assistant reply
    (c_ids, c_mask), (r_ids, r_mask) = encode_pair(tok, "chatml", prompt, "Because it was purring.", "No.")
    n = len(encode_prompt(tok, "chatml", prompt))
    for ids, mask, reply in ((c_ids, c_mask, "Because it was purring."), (r_ids, r_mask, "No.")):
        assert ids[:n] == c_ids[:n] and not any(mask[:n])
        assert [ref.decode(b, skip_special_tokens=False) for b in blocks(ids, mask)] == [reply + "<|im_end|>"]
        assert ref.decode(ids[n:], skip_special_tokens=False) == reply + "<|im_end|>\n"  # then chatml's untrained newline


def test_stop_ids_are_the_end_of_turn_tokens(hf_dirs, reference, sp_tokenizer):
    for name in ("llama3", "chatml"):
        tok, ref = load_tokenizer(hf_dirs[name]), reference(name)
        end = ref.convert_tokens_to_ids(END[name])
        assert stop_ids(tok, name) == [end] == stop_ids(tok, "hf")
    assert stop_ids(sp_tokenizer, "default") == [sp_tokenizer.eos_id]


def test_default_template_with_a_trained_sentencepiece(sp_tokenizer):
    tok = sp_tokenizer
    chat = CHATS[2]
    assert render_chat(tok, "default", chat) == (
        "<s><|user|>\nHello there!</s><|assistant|>\n  Hi! How can I help?  </s>"
        "<|user|>\nTell me a joke about cats.</s><|assistant|>\nWhy did the cat sit on the computer? To keep an eye "
        "on the mouse.</s>"
    )
    ids, mask = encode_chat(tok, "default", chat)
    assert ids[0] == tok.bos_id and mask[0] == 0
    runs = blocks(ids, mask)
    assert [r[-1] for r in runs] == [tok.eos_id, tok.eos_id]  # each reply is trained to end with EOS
    assert [tok.decode(r[:-1]) for r in runs] == [chat[1]["content"], chat[3]["content"]]
    # Untrained ids are the role markers and user turns, EOS after each user turn included.
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == (
        "<|user|>\nHello there!<|assistant|>\n<|user|>\nTell me a joke about cats.<|assistant|>\n"
    )
    assert sum(1 for i, m in zip(ids, mask) if i == tok.eos_id and not m) == 2
    prompt = encode_prompt(tok, "default", chat[:-1])
    assert ids[: len(prompt)] == prompt and tok.decode(prompt).endswith("<|assistant|>\n")


def test_default_template_without_bos_starts_at_the_first_header(hf_dirs):
    tok = load_tokenizer(hf_dirs["chatml"])  # no BOS token
    ids, _ = encode_chat(tok, "default", CHATS[0])
    assert ids[: len(tok.encode("<|user|>"))] == tok.encode("<|user|>")
    assert ids[-1] == tok.eos_id


def test_unusable_templates_fail_clearly(hf_dirs, sp_tokenizer):
    with pytest.raises(MaxlmError, match="must be one of default, llama3, chatml, hf, got 'zephyr'"):
        encode_chat(sp_tokenizer, "zephyr", CHATS[0])
    with pytest.raises(MaxlmError, match="hf needs a Hugging Face tokenizer with a chat_template"):
        encode_chat(sp_tokenizer, "hf", CHATS[0])
    with pytest.raises(MaxlmError, match="hf needs a Hugging Face tokenizer with a chat_template"):
        encode_chat(load_tokenizer(hf_dirs["none"]), "hf", CHATS[0])
    eos_at_end = load_tokenizer(hf_dirs["eos_at_end"])
    assert encode_chat(eos_at_end, "hf", CHATS[0])[1][-1] == 1  # one turn: its EOS is the end marker
    with pytest.raises(MaxlmError, match="renders .* differently from the start of the whole conversation"):
        encode_chat(eos_at_end, "hf", CHATS[2])
    with pytest.raises(MaxlmError, match="at least one message"):
        encode_chat(sp_tokenizer, "default", [])


# ---------------------------------------------------------------- left truncation of a prompt (fit_prompt)

LONG = "The quick brown fox jumps over the lazy dog while the cat watches from the window. " * 6
REPLIES = ("Why did the cat sit on the computer? To keep an eye on the mouse.", "No.")


def longest(tok, name, prompt) -> int:
    return max(len(encode_completion(tok, name, prompt, r)[0]) for r in REPLIES)


@pytest.mark.parametrize("name", ["default", "chatml"])
def test_fit_prompt_cuts_the_earliest_text_and_keeps_the_replies_whole(name, hf_dirs, sp_tokenizer):
    tok = sp_tokenizer if name == "default" else load_tokenizer(hf_dirs["chatml"])
    prompt = [user(LONG), assistant("Paris is the capital of France."), user("Tell me a joke about cats.")]
    full = longest(tok, name, prompt)
    assert fit_prompt(tok, name, prompt, REPLIES, full) == (prompt, False)  # fits: unchanged
    last_turn = longest(tok, name, prompt[2:])
    for max_len in range(last_turn, full, 7):
        fitted, cut = fit_prompt(tok, name, prompt, REPLIES, max_len)
        assert cut and longest(tok, name, fitted) <= max_len
        assert fitted[0]["role"] == "user" and fitted[-1] == prompt[-1]
        kept = prompt[len(prompt) - len(fitted):]
        assert fitted[1:] == kept[1:] and kept[0]["content"].endswith(fitted[0]["content"])  # only its start is gone
        if kept[0]["content"] != fitted[0]["content"]:
            assert longest(tok, name, fitted) >= max_len - 3  # cut by tokens, not far more than needed
        for reply in REPLIES:
            ids, mask = encode_completion(tok, name, fitted, reply)
            whole_ids, whole_mask = encode_completion(tok, name, prompt, reply)
            assert blocks(ids, mask) == blocks(whole_ids, whole_mask)[-1:]  # the reply and its end marker, whole
            assert ids[: len(ids) - sum(mask)][:2] == whole_ids[:2]  # the template's opening stays
    # The long first turn gone entirely: the assistant turn after it goes too, so a user turn leads.
    assert fit_prompt(tok, name, prompt, REPLIES, last_turn) == ([prompt[2]], True)


def test_fit_prompt_keeps_system_messages_and_stops_at_an_empty_last_turn(sp_tokenizer):
    tok = sp_tokenizer
    system = {"role": "system", "content": "You are terse."}
    prompt = [system, user(LONG)]
    bare = longest(tok, "default", [system, user("")])
    fitted, cut = fit_prompt(tok, "default", prompt, REPLIES, bare + 5)
    assert cut and fitted[0] == system and 0 < len(fitted[1]["content"]) < len(LONG)
    assert longest(tok, "default", fitted) <= bare + 5
    # Replies that do not fit even after an empty user turn: the shortest prompt, still too long.
    fitted, cut = fit_prompt(tok, "default", prompt, REPLIES, bare - 1)
    assert cut and fitted == [system, user("")] and longest(tok, "default", fitted) > bare - 1


@pytest.mark.parametrize("name", ["default", "llama3", "chatml"])
def test_the_jinja_form_an_export_writes_renders_and_encodes_as_maxlm(hf_dirs, sp_tokenizer, tmp_path, name):
    # What export-hf writes into a chat run's tokenizer: transformers prompts the export as maxlm trained it.
    from transformers import AutoTokenizer

    from maxlm.ckpt.hf_tokenizer import write_hf_tokenizer

    src = Path(sp_tokenizer.path) if name == "default" else hf_dirs[name]
    (tmp_path / name).mkdir()
    write_hf_tokenizer(src, tmp_path / name, jinja_template(name))
    ref, tok = AutoTokenizer.from_pretrained(tmp_path / name), load_tokenizer(src)
    for chat in CHATS:
        for msgs, generation in ((chat, False), (chat[:-1], True)):
            assert ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation) == render_chat(tok, name, msgs, generation)
        prompt = ref.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True)["input_ids"]
        assert prompt == encode_chat(tok, name, chat[:-1], add_generation_prompt=True)[0]
