"""A tiny random-weight Llama with a real byte-level BPE tokenizer and a chat template."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Solve the problem step by step.\n\nThe answer is 42. Then we add 3 and 4 to get 7.",
    "What is the sum of 12 and 30? First, 12 + 30 = 42.\n\nSo the answer is \\boxed{42}.",
    "A train leaves at noon and travels 60 miles per hour for two hours.",
] * 4


def tiny_tokenizer(*, chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer (~330 tokens) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", pad_token="<|endoftext|>")
    fast.chat_template = chat_template
    return fast


def tiny_llama(tokenizer, *, tie: bool = True, seed: int = 0):
    """A 2-layer random-weight Llama sized for ``tokenizer`` (float32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=tie,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # sharper logits than the default init: varied greedy text
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() == 2:
                p.mul_(8.0)
    return model


def save_tiny(folder: Path, *, tie: bool = True, seed: int = 0):
    """Save a tiny Llama + tokenizer as an HF folder; return (model, tokenizer)."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok, tie=tie, seed=seed)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model, tok
