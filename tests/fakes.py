"""Test fakes: tiny random-weight models, tokenizers and scripted generators, in one place.

Models and tokenizers (deterministic for a given seed):

    ByteTokenizer, tiny_hf_model, tiny_engine   bytes as tokens; llama/qwen2/qwen3 models of
                                                2 layers; a native engine over them
    tiny_tokenizer, tiny_llama, save_tiny       a byte-level BPE tokenizer (~330 tokens, ChatML
                                                template) and a 2-layer Llama; saved as a folder
    save_tiny_llama                             a Llama folder whose shapes vLLM's CPU kernels
                                                accept (head_dim 32), its own BPE tokenizer
    char_tokenizer, tiny_config, tiny_causal_lm a character tokenizer with the PRMs' special
                                                words; llama/mistral/qwen2 causal LMs

Scripted generators and verifiers (no model):

    PromptGenerator   replies ``reply(prompt, index, params)``; remembers every prompt
    ScriptedGenerator replies ``reply(call, request, sample)``; records each call's ``n``
    StepVerifier      scores a step 0.9 when ``rule(step)`` holds, else 0.1

The simulated world (no model, seeded): ``world()`` a simulated engine and PRM,
``problems()`` simulated problems, ``NoEmbedGenerator`` a generator that cannot embed.

Every fake generator counts a token per word and cuts at ``max_tokens`` and the call's
``token_limit`` the way an engine does, unless its docstring says otherwise.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Callable, Sequence

import torch

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.tasks import make_problems
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason, GenerationUsage,
                       Handle, Problem, ScoreOutput, VerifierUsage)
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig


# -- BPE tokenizers trained in the test ---------------------------------------------------------
def bpe_tokenizer(corpus: list[str], *, vocab_size: int, specials: list[str],
                  chat_template: str | None, **tokens: str):
    """A byte-level BPE tokenizer trained on ``corpus`` (``tokens``: eos/bos/pad names)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
    fast.chat_template = chat_template
    return fast


# -- a BPE tokenizer and a tiny Llama (transformers backend, loader, prompting) ----------------
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
    return bpe_tokenizer(CORPUS, vocab_size=330, specials=SPECIALS, chat_template=chat_template,
                         eos_token="<|im_end|>", bos_token="<|im_start|>",
                         pad_token="<|endoftext|>")


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


# -- bytes as tokens and tiny models of the real architectures (native engine) -------------
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


# -- a tiny Llama folder vLLM's CPU kernels accept (head_dim 32) ----------------------------
VLLM_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

_CORPUS = [
    "What is 3 + 5? We add three and five to get eight. The answer is 8.",
    "Step 1: compute the sum.\n\nStep 2: check the result.\n\nTherefore the answer is 42.",
    "A quiet town by the sea had an old clockmaker whose shop was full of ticking gears.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) \\boxed{} answer question system user assistant",
]


def save_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    """Write config, safetensors weights and tokenizer of a tiny Llama into ``folder``:
    2 layers, hidden 64, 2 heads of head_dim 32 (vLLM's CPU kernels need >= 32), 1 KV head,
    ~300 BPE tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    fast = bpe_tokenizer(_CORPUS * 4, vocab_size=300, specials=["<s>", "</s>", "<pad>"],
                         chat_template=VLLM_CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>",
                         pad_token="<pad>")
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


# -- a character tokenizer and tiny causal LMs of the PRM architectures ----------------------
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


# -- scripted generators and verifiers ----------------------------------------------------------
class _NoKV:
    """Handles without KV: pinning is a no-op."""

    def pin(self, handles, *, value=None) -> None:
        pass


class PromptGenerator(_NoKV):
    """For strategies that write their own prompts (threads, plan-and-budget, self-eval):
    remembers the text of every prompt it was given (``root``) and answers each request
    with ``reply(prompt, index, params) -> text`` (or ``(text, finish)``, or ``(text,
    finish, logprob)`` with every token's log-probability). Continuing a handle continues
    its prompt: the reply sees the same prompt text."""

    def __init__(self, reply: Callable, *, logprob: float = -0.1) -> None:
        self.reply = reply
        self.logprob = logprob
        self.prompts: dict[int, str] = {}
        self.live: set[int] = set()
        self.calls: list[list[tuple[str, int, float]]] = []   # (prompt, max_tokens, temp)
        self._next = 0

    def _new(self, prompt: str) -> int:
        self._next += 1
        self.prompts[self._next] = prompt
        self.live.add(self._next)
        return self._next

    def root(self, problem: Problem) -> int:
        return self._new(problem.question)

    def expand(self, requests, *, token_limit=None) -> ExpandOutput:
        self.calls.append([(self.prompts[r.prefix], r.params.max_tokens,
                            r.params.temperature) for r in requests])
        out, generated = [], 0
        left = token_limit
        for r in requests:
            if r.prefix not in self.live:
                raise ValueError(f"handle {r.prefix} is not live")
            conts = []
            for i in range(r.n):
                reply = self.reply(self.prompts[r.prefix], i, r.params)
                if not isinstance(reply, tuple):
                    reply = (reply, FinishReason.EOS)
                text, finish = reply[0], reply[1]
                logprob = reply[2] if len(reply) > 2 else self.logprob
                words = text.split(" ")
                if len(words) > r.params.max_tokens:
                    words, finish = words[: r.params.max_tokens], FinishReason.MAX_TOKENS
                if left is not None and len(words) > left:
                    words, finish = words[:left], FinishReason.BUDGET
                if left is not None:
                    left -= len(words)
                text = " ".join(words)
                generated += len(words)
                handle = self._new(self.prompts[r.prefix])
                conts.append(Continuation(handle=handle, token_ids=tuple(range(len(words))),
                                          text=text, logprobs=(logprob,) * len(words),
                                          finish=finish))
            out.append(tuple(conts))
        return ExpandOutput(continuations=tuple(out),
                            usage=GenerationUsage(generated_tokens=generated))

    def release(self, handles) -> None:
        self.live.difference_update(handles)

    def kv_bytes(self) -> int:
        return len(self.live)

    def prompts_of_call(self, i: int) -> list[str]:
        return [p for p, _, _ in self.calls[i]]


class StepVerifier:
    """Scores a step ``good`` if ``rule(step)`` is true: 0.9 for good steps, 0.1 else."""

    incremental = False

    def __init__(self, rule: Callable[[str], bool]) -> None:
        self.rule = rule
        self.seen: list[list[str]] = []

    def score(self, problem: Problem, trajectories) -> ScoreOutput:
        out = []
        for steps in trajectories:
            self.seen.append(list(steps))
            out.append(tuple(0.9 if self.rule(s) else 0.1 for s in steps))
        return ScoreOutput(scores=tuple(out), usage=VerifierUsage(
            calls=len(trajectories), tokens=sum(len(" ".join(t).split()) for t in trajectories)))


class ScriptedGenerator(_NoKV):
    """A Generator whose replies are scripted: ``reply(call, request, sample)`` gives the
    ``(text, FinishReason)`` of each continuation (indices count from 0). Tokens are the
    text's words (no cut at ``max_tokens`` or ``token_limit``: the script decides);
    ``asked`` records the ``n`` of every request, call by call."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.asked: list[list[int]] = []
        self.handles = 0

    def root(self, problem: Problem) -> int:
        return 0

    def expand(self, requests, *, token_limit=None) -> ExpandOutput:
        call = len(self.asked)
        self.asked.append([r.n for r in requests])
        out, generated = [], 0
        for j, r in enumerate(requests):
            conts = []
            for i in range(r.n):
                text, finish = self.reply(call, j, i)
                ids = tuple(range(len(text.split())))
                generated += len(ids)
                self.handles += 1
                conts.append(Continuation(handle=self.handles, token_ids=ids, text=text,
                                          logprobs=(-0.1,) * len(ids), finish=finish))
            out.append(tuple(conts))
        return ExpandOutput(continuations=tuple(out),
                            usage=GenerationUsage(generated_tokens=generated))

    def release(self, handles) -> None:
        pass

    def kv_bytes(self) -> int:
        return 0


# -- the simulated world --------------------------------------------------------------------
def world(*, auroc: float = 0.9, seed: int = 0) -> tuple[SimulatedGenerator, SimulatedPRM]:
    return (SimulatedGenerator(SimulatedBackendConfig(world_seed=seed)),
            SimulatedPRM(SimulatedPRMConfig(world_seed=seed, auroc=auroc)))


def problems(n: int, *, seed: int = 0, difficulty=(0.2, 0.8)) -> list[Problem]:
    return make_problems(n, seed=seed, difficulty=difficulty)


class NoEmbedGenerator:
    """A generator that forwards the protocol but cannot embed (text fallback path)."""

    def __init__(self, inner: SimulatedGenerator) -> None:
        self.inner = inner

    def root(self, problem: Problem) -> Handle:
        return self.inner.root(problem)

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        return self.inner.expand(requests, token_limit=token_limit)

    def pin(self, handles, *, value=None) -> None:
        self.inner.pin(handles, value=value)

    def release(self, handles) -> None:
        self.inner.release(handles)

    def kv_bytes(self) -> int:
        return self.inner.kv_bytes()
