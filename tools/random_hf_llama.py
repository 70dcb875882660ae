"""A small Hugging Face Llama with random weights and a tokenizer trained here, imported as a maxlm run: the base of
configs/sft_lora_hh.yaml. CPU, no download (needs the `test` extra's transformers and torch).

    python tools/random_hf_llama.py                # writes runs/hf_random_llama (HF dir) and runs/llama_random (maxlm run)

The tokenizer is a 2,048-piece sentencepiece model trained with maxlm's own trainer on the dialogues the config
fine-tunes on; the model has configs/models/chat_small.yaml's shape (128 wide, 4 layers, GQA 4/2 heads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

from maxlm.ckpt.hf import import_hf
from maxlm.data.examples import record_texts
from maxlm.data.tokenizers import train_sentencepiece

REPO = Path(__file__).resolve().parent.parent
HH = REPO.parent / "shared" / "data" / "preference" / "hh_rlhf_harmless_part1.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-out", default="runs/hf_random_llama")
    ap.add_argument("--run-out", default="runs/llama_random")
    ap.add_argument("--data", default=str(HH), help="texts the tokenizer is trained on (any maxlm record file)")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hf_out = Path(args.hf_out)
    hf_out.mkdir(parents=True, exist_ok=True)
    texts = record_texts(args.data, "sft", "skip", "0:1200")  # the rows configs/sft_lora_hh.yaml trains on
    sp = train_sentencepiece(texts, hf_out / "tokenizer.model", vocab_size=args.vocab_size)
    torch.manual_seed(args.seed)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(hf_out)
    transformers.AutoTokenizer.from_pretrained(hf_out).save_pretrained(hf_out)  # tokenizer.json etc. from tokenizer.model
    print(f"HF model: {hf_out} (tokenizer {sp})")
    print(f"maxlm run: {import_hf(hf_out, args.run_out)}")


if __name__ == "__main__":
    main()
