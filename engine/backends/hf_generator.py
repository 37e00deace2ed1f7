"""The transformers baseline behind the Generator protocol: one HF model, prefix KV reused.

Contract: :class:`HFGenerator` runs an ``AutoModelForCausalLM`` with ``DynamicCache``:
each distinct prefix of an ``expand`` call is computed once (batch 1), its KV is repeated
for the request's ``n`` branches (``batch_repeat_interleave``), and all live branches of
all requests decode in lockstep, one token per branch per step (one forward per request
group, since groups have different prefix lengths). Finished rows leave the batch
(``batch_select_indices``), so no row decodes padding.

KV sharing is a tree of segments: a handle's KV is its parent's segment chain plus its
own tokens' keys/values, so a prefix's KV is stored once however many handles extend it.

    root P ── seg(P) ─┬─ seg(a1)   handle h1 = P + a1 (its last token's KV not yet run)
                      └─ seg(a2)   handle h2 = P + a2

A branch's last sampled token has no KV until its handle is expanded (then it is the one
token prefilled); a branch cut by ``token_limit`` keeps KV for all its tokens and its
next-token logits, so expanding it prefills nothing. Nothing is evicted: ``release``
drops a handle, and segments no live handle reaches are freed (Python references);
``kv_bytes`` counts each resident segment once.

Sampling matches the native engine (:mod:`ttc.engine.native.sampling`): per-branch generators
from ``(seed, index)``, greedy at temperature 0, logprobs of the raw logits. Stop strings:
the text is cut right after the first stop string (tokens are kept as generated).
Usage: ``prefill_tokens`` = prefix tokens run through the model in this call,
``cached_tokens`` = prefix tokens of the requests served from KV already resident.
Must NOT know: rewards, strategies, why a branch is kept.
"""

from __future__ import annotations

import sys

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ttc.engine.handles import HandleTable
from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT, eos_ids, format_prompt
from ttc.engine.native.sampling import RowParams, sample, seeded_generator
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason,
                       GenerationUsage, Handle, Problem, SamplingParams)

__all__ = ["HFGenerator"]

Layers = tuple[tuple[Tensor, Tensor], ...]   # per layer (keys, values): [1, kv_heads, T, head_dim]


@dataclass(eq=False)
class _Segment:
    """Keys/values of positions ``[start, end)`` of a sequence, after ``parent``'s."""

    parent: "_Segment | None"
    end: int
    layers: Layers

    def chain(self) -> list["_Segment"]:
        out, seg = [], self
        while seg is not None:
            out.append(seg)
            seg = seg.parent
        return out[::-1]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for k, v in self.layers)


@dataclass(eq=False)
class _HFHandle:
    tokens: tuple[int, ...]
    prompt_len: int
    kv: _Segment | None = None       # covers tokens[:kv.end]
    logits: Tensor | None = None     # next-token logits [vocab] float32, when kv covers all
    pinned: bool = True
    value: float | None = None

    @property
    def kv_len(self) -> int:
        return 0 if self.kv is None else self.kv.end


@dataclass(eq=False)
class _Branch:
    group: int
    index: int
    params: SamplingParams
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None
    text: str = ""
    kv: _Segment | None = None
    logits: Tensor | None = None


@dataclass(eq=False)
class _Group:
    """The live branches of one request, decoding over one batched DynamicCache."""

    state: _HFHandle
    prefix_kv: _Segment
    rows: list[_Branch]               # live rows, in cache-batch order
    cache: Any
    logits: Tensor                    # [len(rows), vocab] float32


class HFGenerator:
    """Generator over a transformers causal LM (the correctness and speed baseline)."""

    def __init__(self, model: Any, tokenizer: Any, *,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, seed: int = 0) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.seed = seed
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids(tokenizer, getattr(model, "generation_config", None),
                               model.config)
        self.max_position = int(getattr(model.config.get_text_config(), "max_position_embeddings",
                                        None) or 1 << 62)
        self._check_full_attention()
        self._handles: HandleTable[_HFHandle] = HandleTable()
        self._calls = 0
        self._peak = 0

    def causal_lm(self) -> tuple[Any, Any]:
        """The model and tokenizer, lent to a verifier (:class:`ttc.protocols.HostsCausalLM`)."""
        return self.model, self.tokenizer

    def _check_full_attention(self) -> None:
        from transformers import DynamicCache  # noqa: PLC0415

        layers = DynamicCache(config=self.model.config).layers
        if any(getattr(layer, "is_sliding", False) for layer in layers):
            raise ValueError(
                f"model {type(self.model).__name__} uses sliding-window attention, whose cache "
                f"drops old positions; the hf backend shares prefix KV by position and needs "
                f"full attention in every layer.")

    @classmethod
    def from_config(cls, config: Any) -> "HFGenerator":
        from ttc.engine.loader import load_hf_model  # noqa: PLC0415

        from ttc.engine.hardware import choose  # noqa: PLC0415

        choice = choose(device=config.device, dtype=config.dtype)
        if choice.note:
            print(f"ttc: {choice.note}", file=sys.stderr)
        model, tokenizer = load_hf_model(config.model, dtype=choice.dtype, device=choice.device)
        system = DEFAULT_SYSTEM_PROMPT if config.system_prompt is None else (config.system_prompt or None)
        return cls(model, tokenizer, system_prompt=system, seed=config.seed)

    # ------------------------------------------------------------------ handles

    def _new_handle(self, state: _HFHandle) -> int:
        return self._handles.add(state)

    def _state(self, handle: Handle) -> _HFHandle:
        return self._handles.get(handle)

    def root(self, problem: Problem) -> Handle:
        return self.handle_for_tokens(format_prompt(self.tokenizer, problem,
                                                    system_prompt=self.system_prompt))

    def handle_for_tokens(self, token_ids: Sequence[int], *, prompt_len: int | None = None) -> int:
        """A pinned handle for a token sequence (its KV is computed at its first expand)."""
        tokens = tuple(int(t) for t in token_ids)
        if not tokens:
            raise ValueError("a handle needs at least one token; got an empty sequence.")
        return self._new_handle(_HFHandle(tokens=tokens, prompt_len=prompt_len or len(tokens)))

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        for h in handles:
            st = self._state(h)
            st.pinned = True
            if value is not None:
                st.value = value

    def unpin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        """Mark handles unpinned (this baseline never evicts, so their KV stays)."""
        for h in handles:
            st = self._state(h)
            st.pinned = False
            if value is not None:
                st.value = value

    def release(self, handles: Sequence[Handle]) -> None:
        for h in handles:
            self._state(h)
        for h in handles:
            self._handles.pop(h)

    def kv_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for st in self._handles.values():
            seg = st.kv
            while seg is not None and id(seg) not in seen:
                seen.add(id(seg))
                total += seg.nbytes()
                seg = seg.parent
        return total

    @property
    def peak_kv_bytes(self) -> int:
        return self._peak

    def token_ids(self, handle: Handle) -> list[int]:
        return list(self._state(handle).tokens)

    def token_count(self, handle: Handle) -> int:
        return len(self._state(handle).tokens)

    def text_of(self, handle: Handle) -> str:
        """The text generated after the prompt (special tokens skipped)."""
        st = self._state(handle)
        return self.tokenizer.decode(list(st.tokens[st.prompt_len:]), skip_special_tokens=True)

    # ------------------------------------------------------------------ model calls

    def _cache(self, seg: _Segment | None, repeat: int = 1) -> Any:
        from transformers import DynamicCache  # noqa: PLC0415

        if seg is None:
            return DynamicCache(config=self.model.config)
        chain = seg.chain()
        layers = []
        for i in range(len(chain[0].layers)):
            if len(chain) == 1:
                k, v = chain[0].layers[i]
            else:
                k = torch.cat([s.layers[i][0] for s in chain], dim=-2)
                v = torch.cat([s.layers[i][1] for s in chain], dim=-2)
            layers.append((k, v))
        cache = DynamicCache(ddp_cache_data=layers, config=self.model.config)
        if repeat > 1:
            cache.batch_repeat_interleave(repeat)
        return cache

    def _forward(self, input_ids: Tensor, cache: Any) -> Tensor:
        """Run ``input_ids`` [rows, T] after ``cache``; the last position's logits [rows, vocab]."""
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1, :].float()

    @staticmethod
    def _layers_of(cache: Any, *, row: int | None, start: int, end: int) -> Layers:
        """Keys/values of positions ``[start, end)`` of cache row ``row`` (``None``: a batch-1
        cache, whose tensors are kept as they are when the slice is all of them)."""
        out = []
        whole = row is None and start == 0
        r = 0 if row is None else row
        for layer in cache.layers:
            k = layer.keys[r:r + 1, :, start:end]
            v = layer.values[r:r + 1, :, start:end]
            # NOTE: a view of part of a tensor would keep all of it alive: copy the slice.
            out.append((k, v) if whole else (k.clone(), v.clone()))
        return tuple(out)

    def _make_ready(self, st: _HFHandle) -> int:
        """Compute KV for all of ``st``'s tokens and its next-token logits; tokens run."""
        if st.logits is not None:
            return 0
        start = st.kv_len
        cache = self._cache(st.kv)
        ids = torch.tensor([st.tokens[start:]], dtype=torch.long, device=self.device)
        st.logits = self._forward(ids, cache)[0]
        layers = self._layers_of(cache, row=None, start=start, end=len(st.tokens))
        st.kv = _Segment(parent=st.kv, end=len(st.tokens), layers=layers)
        return len(st.tokens) - start

    def _transient_bytes(self, groups: Sequence[_Group]) -> int:
        return sum(layer.keys.numel() * layer.keys.element_size() * 2
                   for g in groups for layer in g.cache.layers)

    # ------------------------------------------------------------------ expand

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        if token_limit is not None and token_limit < 0:
            raise ValueError(f"token_limit must be None or >= 0; got {token_limit!r}.")
        states = [self._state(r.prefix) for r in requests]
        for r, st in zip(requests, states):
            if len(st.tokens) >= self.max_position:
                raise ValueError(f"handle {r.prefix!r} has {len(st.tokens)} tokens; the model's "
                                 f"context is {self.max_position} tokens, so it cannot grow.")
        self._calls += 1
        prefill = cached = 0
        with torch.inference_mode():
            for st in states:
                ran = self._make_ready(st)
                prefill += ran
                cached += len(st.tokens) - ran
            groups, branches = self._start(requests, states)
            resident = self.kv_bytes()     # handles change only after decoding
            self._peak = max(self._peak, resident + self._transient_bytes(groups))
            self._decode(groups, token_limit, resident=resident)
        outputs, generated = [], 0
        for r, st, rows in zip(requests, states, branches):
            conts = []
            for b in rows:
                child = _HFHandle(tokens=st.tokens + tuple(b.tokens), prompt_len=st.prompt_len,
                                     kv=b.kv if b.tokens else st.kv,
                                     logits=b.logits if b.tokens else st.logits)
                generated += len(b.tokens)
                conts.append(Continuation(
                    handle=self._new_handle(child), token_ids=tuple(b.tokens), text=b.text,
                    logprobs=tuple(b.logprobs) if b.params.logprobs else (), finish=b.finish))
            outputs.append(tuple(conts))
        self._peak = max(self._peak, self.kv_bytes())
        return ExpandOutput(continuations=tuple(outputs),
                            usage=GenerationUsage(prefill_tokens=prefill, cached_tokens=cached,
                                                  generated_tokens=generated,
                                                  peak_kv_bytes=self._peak))

    def _start(self, requests: Sequence[ExpandRequest], states: Sequence[_HFHandle]
               ) -> tuple[list[_Group], list[list[_Branch]]]:
        groups, branches = [], []
        for gi, (r, st) in enumerate(zip(requests, states)):
            if r.params.temperature == 0:
                gens: list[torch.Generator | None] = [None] * r.n
            else:
                seed = r.params.seed
                if seed is None:
                    seed = hash((self.seed, self._calls, gi)) & ((1 << 62) - 1)
                gens = [seeded_generator(seed, i) for i in range(r.n)]
            rows = [_Branch(group=gi, index=i, params=r.params, generator=g)
                    for i, g in enumerate(gens)]
            branches.append(rows)
            assert st.kv is not None and st.logits is not None  # _make_ready ran
            groups.append(_Group(state=st, prefix_kv=st.kv, rows=list(rows),
                                 cache=self._cache(st.kv, repeat=r.n),
                                 logits=st.logits.unsqueeze(0).expand(r.n, -1)))
        return groups, branches

    def _decode(self, groups: list[_Group], token_limit: int | None, *, resident: int) -> None:
        generated = 0
        while groups:
            rows = [b for g in groups for b in g.rows]
            if token_limit is not None and generated + len(rows) > token_limit:
                for g in groups:           # cut in lockstep: every live branch stops here
                    self._finish_rows(g, range(len(g.rows)), FinishReason.BUDGET)
                return
            logits = torch.cat([g.logits for g in groups]) if len(groups) > 1 else groups[0].logits
            params = [RowParams(temperature=b.params.temperature, top_p=b.params.top_p,
                                top_k=b.params.top_k) for b in rows]
            tokens, lps = sample(logits, params, [b.generator for b in rows])
            for b, t, lp in zip(rows, tokens.tolist(), lps.tolist()):
                b.tokens.append(t)
                b.logprobs.append(lp)
            generated += len(rows)
            still = []
            for g in groups:
                done = [i for i, b in enumerate(g.rows) if self._check_finish(b, g.state)]
                if done:
                    self._finish_rows(g, done, None)
                if g.rows:
                    still.append(g)
            groups = still
            for g in groups:
                ids = torch.tensor([[b.tokens[-1]] for b in g.rows], dtype=torch.long,
                                   device=self.device)
                g.logits = self._forward(ids, g.cache)
            # NOTE: snapshots of finished rows are not counted until the call ends (small).
            self._peak = max(self._peak, resident + self._transient_bytes(groups))

    def _check_finish(self, b: _Branch, st: _HFHandle) -> bool:
        """Set ``b.finish`` if its newest token ends it; return True when it does."""
        token = b.tokens[-1]
        if token in self.eos_ids:
            b.finish = FinishReason.EOS
        elif b.params.stop and self._hit_stop(b):
            b.finish = FinishReason.STOP
        elif (len(b.tokens) >= b.params.max_tokens
              or len(st.tokens) + len(b.tokens) >= self.max_position):
            b.finish = FinishReason.MAX_TOKENS
        if b.finish is not None and b.finish is not FinishReason.STOP:
            b.text = self.tokenizer.decode(b.tokens, skip_special_tokens=True)
        return b.finish is not None

    def _hit_stop(self, b: _Branch) -> bool:
        text = self.tokenizer.decode(b.tokens, skip_special_tokens=True)
        ends = [i + len(s) for s in b.params.stop if (i := text.find(s)) >= 0]
        if not ends:
            return False
        b.text = text[:min(ends)]     # keep the first stop string, nothing after it
        return True

    def _finish_rows(self, g: _Group, idx: Sequence[int], reason: FinishReason | None) -> None:
        """Snapshot the KV of rows ``idx`` of ``g`` for their handles and drop them."""
        idx = list(idx)
        start = g.prefix_kv.end
        cache_len = g.cache.get_seq_length()
        for i in idx:
            b = g.rows[i]
            if reason is not None:
                b.finish = reason
                b.text = self.tokenizer.decode(b.tokens, skip_special_tokens=True)
            if not b.tokens:
                continue
            if cache_len > start:
                b.kv = _Segment(parent=g.prefix_kv, end=cache_len,
                                layers=self._layers_of(g.cache, row=i, start=start, end=cache_len))
            else:
                b.kv = g.prefix_kv
            if reason is FinishReason.BUDGET:     # its tokens all have KV: keep its logits
                b.logits = g.logits[i].clone()
        gone = set(idx)
        keep = [i for i in range(len(g.rows)) if i not in gone]
        g.rows = [g.rows[i] for i in keep]
        if g.rows and len(keep) < cache_len_rows(g):
            g.cache.batch_select_indices(torch.tensor(keep, device=self.device))
            g.logits = g.logits[keep]


def cache_len_rows(g: _Group) -> int:
    """Rows in ``g``'s cache batch."""
    return int(g.cache.layers[0].keys.shape[0])
