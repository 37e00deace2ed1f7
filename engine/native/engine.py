"""The native shared-prefix engine behind the Generator protocol.

Contract: :class:`NativeEngine` owns one model, one paged KV pool and one radix tree.
Handles (ints) name token sequences; each points at a tree node (its KV is resident)
plus, for a prompt not yet run, a tail of tokens still to prefill. ``expand`` first
prefills every pending tail in one batched extend, then hands the prefixes to the
:class:`~ttc.engine.native.scheduler.Scheduler`, which decodes all branches together and
leaves each finished branch's tokens computed; they become new tree nodes under fresh
pinned handles, so the next step reuses them. :class:`NativeGenerator` adds
``root(problem)`` (chat template via ``ttc.engine.prompting``).

Handle lifecycle (ttc.protocols): every handle starts pinned (its node's lock holds the
path resident). ``pin`` re-pins or sets a value; ``release`` unpins and frees at once
every page no pinned handle shares; ``unpin`` unpins but keeps the KV as evictable cache
(evicted lowest value first, then least recently used).

For incremental PRM scoring: :meth:`NativeEngine.extend` runs new tokens after a handle
(or a token-id prefix, matched against the tree) and returns their final-norm hidden
states plus a pinned handle; :meth:`NativeEngine.logits` applies the LM head.

Policy and PRM: each :class:`NativeEngine` instance owns its own model, KV pool and
tree, sized by its own ``kv_memory_gb``; a PRM hosted on a second instance never
shares or evicts the policy's KV (different weights give different keys and values, so
sharing pages would be wrong anyway). A PRM that is the policy model itself (a judge) can
use the policy's instance: it then shares prefixes and the pool.
Must NOT know: rewards, strategies, why a branch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ttc.engine.native.kv_cache import KVCacheFull, Node, PagePool, RadixTree
from ttc.engine.native.model import NativeModel, from_hf
from ttc.engine.native.config import NativeBackendConfig
from ttc.engine.native.runner import ExtendItem, ModelRunner
from ttc.engine.native.scheduler import PrefixWork, Scheduler
from ttc.registry import ConfigError
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, GenerationUsage, Handle,
                       Problem)

__all__ = ["NativeEngine", "NativeGenerator", "KVCacheFull"]


@dataclass(eq=False)
class _HandleState:
    node: Node
    tail: tuple[int, ...]          # tokens after node still to prefill
    pinned: bool                   # False: kept by ``unpin`` as evictable cache
    prompt_len: int                # tokens of the root prompt (text_of starts after it)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def eos_ids_of(hf_config: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)


class NativeEngine:
    """A model, its paged KV pool, radix tree, scheduler, and the handles into them."""

    def __init__(self, model: NativeModel, tokenizer: Any, *, page_size: int = 16,
                 kv_memory_gb: float = 2.0, max_batch_tokens: int = 2048,
                 eos_ids: Sequence[int] = (), seed: int = 0,
                 setting: str = "backend.kv_memory_gb") -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be a positive integer; got {page_size!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.page_size = page_size
        bytes_per_page = model.kv_bytes_per_token() * page_size
        num_pages = int(kv_memory_gb * (1 << 30)) // bytes_per_page
        if num_pages < 2:
            raise ConfigError(f"{setting}={kv_memory_gb!r} holds fewer than 2 KV pages of "
                              f"{bytes_per_page} bytes; raise {setting}.")
        self.pool = PagePool(num_pages=num_pages, page_size=page_size, setting=setting)
        self.tree = RadixTree(self.pool)
        self.runner = ModelRunner(model, num_pages=num_pages, page_size=page_size,
                                  max_batch_tokens=max_batch_tokens)
        self.scheduler = Scheduler(tree=self.tree, pool=self.pool, runner=self.runner,
                                   tokenizer=tokenizer, eos_ids=eos_ids,
                                   max_position=model.config.max_position)
        self.seed = seed
        self._calls = 0
        self._handles: dict[int, _HandleState] = {}
        self._next_handle = 0

    @classmethod
    def from_hf(cls, hf_config: Any, state_dict: dict[str, Tensor], tokenizer: Any, *,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attention: str = "auto", **kwargs: Any) -> "NativeEngine":
        """Build from a transformers config and an HF-named state dict."""
        model = from_hf(hf_config, state_dict, dtype=dtype, device=device, attention=attention)
        kwargs.setdefault("eos_ids", eos_ids_of(hf_config, tokenizer))
        return cls(model, tokenizer, **kwargs)

    # -- handles ----------------------------------------------------------------------
    def _new_handle(self, node: Node, tail: Sequence[int], prompt_len: int) -> int:
        hid = self._next_handle
        self._next_handle += 1
        self.tree.pin(node)
        self._handles[hid] = _HandleState(node=node, tail=tuple(tail), pinned=True,
                                          prompt_len=prompt_len)
        return hid

    def _state(self, handle: Handle) -> _HandleState:
        st = self._handles.get(handle)  # type: ignore[arg-type]
        if st is None or not st.node.alive:
            raise ValueError(f"handle {handle!r} is not live (released, evicted or never issued).")
        return st

    def handle_for_tokens(self, token_ids: Sequence[int], *, prompt_len: int | None = None) -> int:
        """A pinned handle for a token sequence: the longest cached prefix plus a tail to prefill."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("a sequence needs at least one token; got none.")
        if len(ids) >= self.model.config.max_position:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is "
                             f"{self.model.config.max_position} tokens.")
        node = self.tree.match(ids)
        if node.end == len(ids) and node.payload is None:
            # Fully cached but no hidden state for its last token: recompute the last
            # page's worth so the first sampled token has logits.
            node = self.tree.match(ids, limit=len(ids) - 1)
        return self._new_handle(node, ids[node.end:], len(ids) if prompt_len is None else prompt_len)

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        for h in handles:
            st = self._state(h)
            if st.pinned:
                if value is not None:
                    st.node.value = value
            else:
                self.tree.unretain(st.node)
                self.tree.pin(st.node, value=value)
                st.pinned = True

    def unpin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        """Unpin but keep the KV as evictable cache (lowest value evicted first)."""
        for h in handles:
            st = self._handles.get(h)  # type: ignore[arg-type]
            if st is not None and st.pinned and st.node.alive:
                st.pinned = False
                self.tree.unpin(st.node, value=value)
                self.tree.retain(st.node)

    def release(self, handles: Sequence[Handle]) -> None:
        """End handles; KV that no pinned handle shares is freed at once."""
        for h in handles:
            st = self._handles.pop(h, None)  # type: ignore[arg-type]
            if st is None:
                continue
            if not st.node.alive:
                continue                     # evicted while kept as cache
            if st.pinned:
                self.tree.unpin(st.node)
            else:
                self.tree.unretain(st.node)
            self.tree.free_unlocked(st.node)

    def kv_bytes(self) -> int:
        return self.pool.num_used * self.runner.bytes_per_page

    @property
    def peak_kv_bytes(self) -> int:
        return self.pool.peak_used * self.runner.bytes_per_page

    def token_ids(self, handle: Handle) -> list[int]:
        st = self._state(handle)
        return self.tree.tokens_of(st.node) + list(st.tail)

    def token_count(self, handle: Handle) -> int:
        st = self._state(handle)
        return st.node.end + len(st.tail)

    def text_of(self, handle: Handle) -> str:
        """Decoded text after the root prompt."""
        st = self._state(handle)
        return self.tokenizer.decode(self.token_ids(handle)[st.prompt_len:],
                                     skip_special_tokens=True)

    def check_invariants(self) -> None:
        self.tree.check_invariants()
        for h, st in self._handles.items():
            if st.node.alive and st.pinned:
                assert st.node.lock > 0, f"pinned handle {h} on an unlocked node"

    # -- compute ----------------------------------------------------------------------
    def _prefill_pending(self, states: Sequence[_HandleState], *, keep_all: bool = False
                         ) -> list[Tensor]:
        """Compute the tails of ``states`` (each pinned); move each to its new node."""
        ps = self.page_size
        items, owned = [], []
        parents = [st.node for st in states]
        for node in parents:                # NOTE: parents stay resident while we allocate
            self.tree.pin(node)
        try:
            for st in states:
                parent = st.node
                n_pages = -(-(parent.end + len(st.tail)) // ps) - parent.end // ps
                pages = self.pool.alloc(n_pages)
                owned.append(pages)
                if parent.end % ps:
                    self.runner.copy_page(self.tree.page_table(parent)[-1], pages[0])
                table = self.tree.page_table(parent)[: parent.end // ps] + pages
                items.append(ExtendItem(table=table, start=parent.end, tokens=st.tail))
            hidden = self.runner.extend(items)
        except BaseException:
            for pages in owned:
                self.pool.free(pages)
            raise
        finally:
            for node in parents:
                self.tree.unpin(node)
        for st, pages, h in zip(states, owned, hidden):
            node = self.tree.add_child(st.node, st.tail, pages, payload=h[-1].clone())
            if st.pinned:                   # the handle moves to the computed node
                self.tree.pin(node)
                self.tree.unpin(st.node)
            else:
                self.tree.retain(node)
                self.tree.unretain(st.node)
            st.node, st.tail = node, ()
        return hidden if keep_all else []

    def extend(self, prefix: Handle | Sequence[int], new_token_ids: Sequence[int]
               ) -> tuple[Tensor, int]:
        """Run ``new_token_ids`` after ``prefix``; return their hidden states and a pinned handle.

        Returns ``(hidden [len(new_token_ids), hidden_size] with the final norm applied,
        handle)``; the handle names prefix + new tokens.
        """
        hidden, handles = self.extend_batch([(prefix, new_token_ids)])
        return hidden[0], handles[0]

    def extend_batch(self, items: Sequence[tuple[Handle | Sequence[int], Sequence[int]]]
                     ) -> tuple[list[Tensor], list[int]]:
        """:meth:`extend` for many items in one batched prefill."""
        states, counts, hids = [], [], []
        for prefix, new in items:
            new = [int(t) for t in new]
            if not new:
                raise ValueError("extend needs at least one new token; got none.")
            if isinstance(prefix, (list, tuple)):
                ids = [int(t) for t in prefix] + new
                node = self.tree.match(ids, limit=len(prefix))
                prompt_len = len(prefix)
                tail = ids[node.end:]
            else:
                st = self._state(prefix)
                node, tail, prompt_len = st.node, list(st.tail) + new, st.prompt_len
            if node.end + len(tail) > self.model.config.max_position:
                raise ValueError(f"the sequence would have {node.end + len(tail)} tokens; the "
                                 f"model's context is {self.model.config.max_position} tokens.")
            hid = self._new_handle(node, tail, prompt_len)
            hids.append(hid)
            states.append(self._handles[hid])
            counts.append(len(new))
        try:
            hidden = self._prefill_pending(states, keep_all=True)
        except BaseException:
            self.release(hids)
            raise
        return [h[-n:] for h, n in zip(hidden, counts)], hids

    def logits(self, hidden: Tensor) -> Tensor:
        """``[rows, hidden_size]`` final-norm hidden states -> ``[rows, vocab]`` float32 logits."""
        return self.model.logits(hidden)

    def embed(self, handles: Sequence[Handle]) -> list[list[float]]:
        """The final hidden state of each handle's last token, L2-normalised."""
        out = []
        for h in handles:
            st = self._state(h)
            if st.tail:
                self._prefill_pending([st])
            v = st.node.payload.float()
            out.append((v / v.norm().clamp_min(1e-6)).tolist())
        return out

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        if token_limit is not None and token_limit < 0:
            raise ValueError(f"token_limit must be None or >= 0; got {token_limit!r}.")
        states = [self._state(r.prefix) for r in requests]
        limit = self.model.config.max_position
        for r, st in zip(requests, states):
            if st.node.end + len(st.tail) >= limit:
                raise ValueError(f"handle {r.prefix!r} has {st.node.end + len(st.tail)} tokens; "
                                 f"the model's context is {limit} tokens, so it cannot grow.")
        # Prefill every pending tail once (batched), even if several requests share it.
        pending, seen = [], set()
        for st in states:
            if st.tail and id(st) not in seen:
                seen.add(id(st))
                pending.append(st)
        prefill = sum(len(st.tail) for st in pending)
        cached = sum(st.node.end + len(st.tail) for st in states) - prefill
        self._prefill_pending(pending)
        self._calls += 1
        work = [PrefixWork(node=st.node, n=r.n, params=r.params,
                           seed=None if r.params.temperature == 0 else
                           hash((self.seed, self._calls, i)) & ((1 << 62) - 1))
                for i, (st, r) in enumerate(zip(states, requests))]
        for w in work:                      # NOTE: prefixes stay resident during the call
            self.tree.pin(w.node)
        try:
            results = self.scheduler.decode(work, token_limit=token_limit)
        finally:
            for w in work:
                self.tree.unpin(w.node)
        outputs, generated = [], 0
        for st, branches in zip(states, results):
            conts = []
            for b in branches:
                if b.tokens:
                    node = self.tree.add_child(b.prefix, b.tokens, b.own_pages, payload=b.hidden)
                else:                        # cut by the budget before its first token
                    self.pool.free(b.own_pages)
                    node = b.prefix
                b.own_pages = []
                hid = self._new_handle(node, (), st.prompt_len)
                generated += len(b.tokens)
                conts.append(Continuation(
                    handle=hid, token_ids=tuple(b.tokens),
                    text=self.tokenizer.decode(b.tokens, skip_special_tokens=True),
                    logprobs=tuple(b.logprobs) if b.params.logprobs else (), finish=b.finish))
            outputs.append(tuple(conts))
        usage = GenerationUsage(prefill_tokens=prefill, cached_tokens=cached,
                                generated_tokens=generated, peak_kv_bytes=self.peak_kv_bytes)
        return ExpandOutput(continuations=tuple(outputs), usage=usage)


class NativeGenerator(NativeEngine):
    """The native engine with ``root(problem)``: chat template, tokenize, pinned handle."""

    system_prompt: str | None = None

    @classmethod
    def from_config(cls, config: NativeBackendConfig) -> "NativeGenerator":
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        if config.attention == "triton" and device.type != "cuda":
            raise ConfigError(f"backend.attention='triton' needs a CUDA device; got device "
                              f"{str(device)!r} (use attention: auto or torch).")
        if device.type == "cpu" and dtype is torch.float16:
            raise ConfigError("backend.dtype='float16' is not supported on CPU; use bfloat16 "
                              "or float32.")
        from ttc.engine.loader import load_model  # noqa: PLC0415  (heavy)

        loaded = load_model(config.model, dtype=dtype, device=device)
        gen = cls.from_hf(loaded.hf_config, loaded.state_dict, loaded.tokenizer, dtype=dtype,
                          device=device, attention=config.attention, page_size=config.page_size,
                          kv_memory_gb=config.kv_memory_gb,
                          max_batch_tokens=config.max_batch_tokens, seed=config.seed)
        from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT  # noqa: PLC0415

        # None: the default system prompt; "": none (the hf backend's rule).
        gen.system_prompt = (DEFAULT_SYSTEM_PROMPT if config.system_prompt is None
                             else config.system_prompt or None)
        return gen

    def root(self, problem: Problem) -> Handle:
        ids = self.format(problem)
        return self.handle_for_tokens(ids)

    def format(self, problem: Problem) -> list[int]:
        """The prompt's token ids (the model's chat template when it has one)."""
        from ttc.engine.prompting import format_prompt  # noqa: PLC0415

        return list(format_prompt(self.tokenizer, problem, system_prompt=self.system_prompt))
