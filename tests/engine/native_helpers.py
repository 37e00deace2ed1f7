"""Tiny random-weight models of the real architectures, and a byte tokenizer, for engine tests."""

from __future__ import annotations

import torch

VOCAB = 300          # 256 byte tokens + a few specials
EOS = 257


class ByteTokenizer:
    """Bytes are tokens 0..255; 256 = BOS, 257 = EOS (special)."""

    eos_token_id = EOS
    bos_token_id = 256

    def __call__(self, text: str) -> dict:
        return {"input_ids": list(text.encode("utf-8"))}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")


def tiny_hf_model(kind: str = "llama", *, seed: int = 0, tie: bool = True, **overrides):
    """A 2-layer random-weight transformers model of ``kind`` (llama, qwen2, qwen3)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=tie, eos_token_id=EOS, bos_token_id=256)
    common.update(overrides)
    if kind == "llama":
        cfg, cls = LlamaConfig(**common), LlamaForCausalLM
    elif kind == "qwen2":
        cfg, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif kind == "qwen3":
        common.setdefault("head_dim", 32)
        cfg, cls = Qwen3Config(**common), Qwen3ForCausalLM
    else:
        raise ValueError(kind)
    model = cls(cfg).eval()
    with torch.no_grad():   # random biases and norm weights, so every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return cfg, model


def tiny_engine(tiny, **kw):
    """A native engine (fp32, torch attention, byte tokenizer) over ``tiny_hf_model``'s
    ``(config, model)``; ``kv_memory_gb`` 0.002 and ``page_size`` 8 unless given."""
    from ttc.engine.native.engine import NativeEngine

    cfg, hf = tiny
    kw.setdefault("kv_memory_gb", 0.002)
    kw.setdefault("page_size", 8)
    return NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                                attention="torch", **kw)
