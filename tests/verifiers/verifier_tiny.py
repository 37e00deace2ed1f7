"""Tiny random-weight models of the PRM architectures and a char-level tokenizer for tests."""

from __future__ import annotations

import string

import torch

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
WORDS = ["ки", "Yes", "No"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer(*, chat: bool = True, words=WORDS, special=SPECIAL):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(list(special) + list(words) + chars + ["<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=[s for s in special
                                                              if s not in ("<|endoftext|>", "<|im_end|>")])
    fast.add_tokens(list(words))
    if chat:
        fast.chat_template = CHATML
    return fast


def tiny_config(kind: str, vocab: int, **kw):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind]
    args = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                tie_word_embeddings=False)
    args.update(kw)
    return cls(**args)


def tiny_causal_lm(kind: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)),
                                             attn_implementation="sdpa")
    with torch.no_grad():     # sharper logits so the probabilities are not all ~0.5
        model.get_output_embeddings().weight.mul_(20.0)
    return model.float().eval()
