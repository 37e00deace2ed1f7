"""A random-weight tiny Llama and a tokenizer trained in the test, saved as a HF folder.

Shapes: 2 layers, hidden 64, 2 heads of head_dim 32 (vLLM's CPU kernels need >= 32),
1 KV head, vocab ~300 byte-level BPE tokens. Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

_CORPUS = [
    "What is 3 + 5? We add three and five to get eight. The answer is 8.",
    "Step 1: compute the sum.\n\nStep 2: check the result.\n\nTherefore the answer is 42.",
    "A quiet town by the sea had an old clockmaker whose shop was full of ticking gears.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) \\boxed{} answer question system user assistant",
]


def save_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    """Write config, safetensors weights and tokenizer of a tiny Llama into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=32, max_position_embeddings=1024, bos_token_id=0,
                         eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
                         torch_dtype="float32")
    model = LlamaForCausalLM(config)
    with torch.no_grad():        # sharper logits: greedy choices far from ties
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
