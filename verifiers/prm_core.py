"""Step scoring on a causal model with a prefix cache: the machinery every model PRM shares.

Contract. A PRM format (:class:`StepFormat`) turns a problem and its steps into token
segments, each tokenized on its own (never the concatenation, docs/algorithms.md#process-reward-models):

    prompt_ids(problem)          the cached prefix (ends before any chat trailer)
    step_ids(step, index)        the body of step ``index``: kept and extended
    probe_ids                    tokens appended to score a step but never kept (a judge's
                                 question); empty for PRMs whose tag closes the body

Step t's score is read from the final-norm hidden state at the last token of
``prompt + body_1..body_t + probe`` by a :class:`Readout` (``[k, hidden] -> [k]`` in
[0, 1]): two logits of the LM head (``+``/``-``, ``Yes``/``No``) or a reward head.

:class:`StepScorer` keeps a :class:`SegmentTrie` (edges = token-id segments; a node holds
its segment's KV, or a native engine handle, and its step score) and, per ``score`` call:
inserts the uncached segments of every trajectory as pending nodes (shared ones once),
then runs waves of one batched forward each: every job is a chain of pending nodes on top
of a computed parent, run with the parent's cached KV (rows left-padded, new tokens
right-padded, explicit positions). With ``incremental=False`` nothing is cached and every
trajectory is run from its first token, as a whole-trajectory rescorer would.
Usage: ``calls`` = trajectories scored; ``tokens`` = tokens run through the model;
``cached_tokens`` = tokens of the scored sequences served from the cache. The cache is
bounded by ``max_cache_tokens`` (least recently used leaves evicted first).

KV hosts: :class:`TorchHost` runs a transformers backbone (``model(input_ids,
past_key_values=...)`` returning ``last_hidden_state``) and stores KV per node;
:class:`NativeHost` runs on a :class:`ttc.engine.native.NativeEngine` through its public
``extend_batch`` (nodes hold pinned handles; the engine's radix tree holds the KV). A
judge built on the policy's own native engine shares the policy's pool and prefixes;
a separate PRM model gets its own engine, so it never evicts the policy's KV.
Must NOT know: strategies, budgets, how trajectories were generated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

from pydantic import Field

from ttc.types import Frozen, Problem, ScoreOutput, VerifierUsage

__all__ = ["StepFormat", "Readout", "SegmentTrie", "StepScorer", "TorchHost", "NativeHost",
           "LogitPairReadout", "check_steps", "single_token_id", "ModelVerifierConfig",
           "ModelVerifier", "LogitPairPRM", "build_causal_lm_prm"]


def check_steps(trajectories: Sequence[Sequence[str]]) -> None:
    """Refuse empty steps with one sentence naming where."""
    for i, steps in enumerate(trajectories):
        if isinstance(steps, str):
            raise ValueError(f"trajectory {i} is a string; pass a list of step strings.")
        for j, s in enumerate(steps):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"trajectory {i} step {j} is empty ({s!r}); every step "
                                 f"needs text.")


def single_token_id(tokenizer: Any, text: str, *, what: str) -> int:
    """The id of ``text`` as one token (as the tokenizer's vocabulary has it), or ValueError."""
    tid = tokenizer.convert_tokens_to_ids(text)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(tid, int) and tid >= 0 and tid != unk:
        return tid
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    raise ValueError(f"the tokenizer has no single token for the {what} {text!r} (it encodes "
                     f"to {len(ids)} tokens {ids}); this tokenizer does not match the model "
                     f"format.")


class StepFormat(Protocol):
    probe_ids: tuple[int, ...]

    def prompt_ids(self, problem: Problem) -> list[int]: ...

    def step_ids(self, step: str, index: int) -> list[int]: ...


class Readout(Protocol):
    def __call__(self, hidden: Any) -> Any: ...


class LogitPairReadout:
    """P(pos) / (P(pos) + P(neg)) from two rows of an LM head: softmax over two logits."""

    def __init__(self, weight: Any, pos_id: int, neg_id: int, bias: Any = None) -> None:
        import torch

        rows = torch.tensor([pos_id, neg_id], device=weight.device)
        self.w = weight.detach().index_select(0, rows).float()          # [2, hidden]
        self.b = None if bias is None else bias.detach().index_select(0, rows).float()

    def __call__(self, hidden: Any) -> Any:
        logits = hidden.float() @ self.w.T
        if self.b is not None:
            logits = logits + self.b
        return logits.softmax(-1)[:, 0]


@dataclass(eq=False)
class _TrieNode:
    segment: tuple[int, ...]
    parent: "_TrieNode | None"
    depth_tokens: int                       # tokens from the root through this segment
    children: dict[tuple[int, ...], "_TrieNode"] = field(default_factory=dict)
    payload: Any = None                     # TorchHost: per-layer (k, v); NativeHost: handle
    computed: bool = False
    score: float | None = None              # read at the segment end (empty probe)
    probe_score: float | None = None        # read after the probe
    tick: int = 0

    def path(self) -> list["_TrieNode"]:
        out, n = [], self
        while n is not None and n.parent is not None:
            out.append(n)
            n = n.parent
        return out[::-1]


class SegmentTrie:
    """A trie over token-id segments; nodes hold KV payloads and step scores."""

    def __init__(self, *, max_tokens: int, on_evict: Callable[[Any], None] | None = None) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_cache_tokens must be a positive integer; got {max_tokens!r}.")
        self.root = _TrieNode(segment=(), parent=None, depth_tokens=0, computed=True)
        self.max_tokens = max_tokens
        self.on_evict = on_evict
        self.cached_tokens = 0
        self._clock = itertools.count(1)

    def child(self, parent: _TrieNode, segment: tuple[int, ...]) -> tuple[_TrieNode, bool]:
        node = parent.children.get(segment)
        if node is not None:
            return node, False
        node = _TrieNode(segment=segment, parent=parent,
                     depth_tokens=parent.depth_tokens + len(segment))
        parent.children[segment] = node
        return node, True

    def touch(self, node: _TrieNode) -> None:
        t = next(self._clock)
        while node is not None and node.parent is not None:
            node.tick = t
            node = node.parent

    def mark_computed(self, node: _TrieNode, payload: Any) -> None:
        node.payload, node.computed = payload, True
        self.cached_tokens += len(node.segment)

    def remove(self, node: _TrieNode) -> None:
        for c in list(node.children.values()):
            self.remove(c)
        if node.parent is not None:
            node.parent.children.pop(node.segment, None)
        if node.computed:
            self.cached_tokens -= len(node.segment)
            if self.on_evict is not None and node.payload is not None:
                self.on_evict(node.payload)
        node.payload, node.computed = None, False

    def evict(self, *, keep_tick: int) -> None:
        """Drop least recently used leaves (not touched at or after ``keep_tick``)."""
        if self.cached_tokens <= self.max_tokens:
            return
        leaves = [n for n in self._walk() if not n.children and n.tick < keep_tick]
        leaves.sort(key=lambda n: n.tick)
        while self.cached_tokens > self.max_tokens and leaves:
            leaf = leaves.pop(0)
            parent = leaf.parent
            self.remove(leaf)
            if parent is not None and parent.parent is not None and not parent.children \
                    and parent.tick < keep_tick:
                # the parent became a leaf: insert it by its tick
                idx = next((i for i, n in enumerate(leaves) if n.tick > parent.tick), len(leaves))
                leaves.insert(idx, parent)

    def _walk(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def clear(self) -> None:
        for c in list(self.root.children.values()):
            self.remove(c)


class TorchHost:
    """Runs a transformers backbone with per-node KV deltas (batched, padded)."""

    def __init__(self, backbone: Any, *, pad_id: int = 0) -> None:
        self.backbone = backbone
        self.pad_id = pad_id
        self.last_tokens = 0          # tokens the last run() computed (charged by the scorer)
        p = next(backbone.parameters())
        self.device, self.dtype = p.device, p.dtype

    def release(self, payload: Any) -> None:
        pass

    def run(self, jobs: Sequence[tuple[_TrieNode | None, list[int]]], *, keep: bool
            ) -> tuple[list[Any], list[Any]]:
        """For each (parent, new ids): hidden states ``[n, hidden]`` and (if keep) the new KV.

        The new KV is per layer ``(k, v)`` of shape ``[kv_heads, n, head_dim]``.
        """
        import torch
        from transformers import DynamicCache

        self.last_tokens = sum(len(ids) for _, ids in jobs)
        pasts = [self._gather(parent) for parent, _ in jobs]
        plen = [0 if p is None else p[0][0].shape[1] for p in pasts]
        nlen = [len(ids) for _, ids in jobs]
        P, T, B = max(plen), max(nlen), len(jobs)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((B, P + T), dtype=torch.long, device=self.device)
        pos = torch.zeros((B, T), dtype=torch.long, device=self.device)
        for i, (_, new) in enumerate(jobs):
            ids[i, :nlen[i]] = torch.tensor(new, dtype=torch.long)
            mask[i, P - plen[i]: P + nlen[i]] = 1
            pos[i] = plen[i] + torch.arange(T)
        cache = None
        if P > 0:
            cache = DynamicCache()
            n_layers = len(next(p for p in pasts if p is not None))
            for layer in range(n_layers):
                ks, vs = [], []
                for i, p in enumerate(pasts):
                    if p is None:
                        ref = next(q for q in pasts if q is not None)[layer][0]
                        k = v = ref.new_zeros((ref.shape[0], 0, ref.shape[2]))
                    else:
                        k, v = p[layer]
                    pad = P - plen[i]
                    if pad:
                        k = torch.cat([k.new_zeros((k.shape[0], pad, k.shape[2])), k], 1)
                        v = torch.cat([v.new_zeros((v.shape[0], pad, v.shape[2])), v], 1)
                    ks.append(k)
                    vs.append(v)
                cache.update(torch.stack(ks), torch.stack(vs), layer)
        with torch.inference_mode():
            out = self.backbone(input_ids=ids, attention_mask=mask, position_ids=pos,
                                past_key_values=cache if cache is not None else DynamicCache(),
                                use_cache=True)
        hidden = out.last_hidden_state
        hiddens = [hidden[i, :nlen[i]] for i in range(B)]
        kvs: list[Any] = [None] * B
        if keep:
            new_cache = out.past_key_values
            layers = _cache_layers(new_cache)
            kvs = [[(k[i, :, P: P + nlen[i]].clone(), v[i, :, P: P + nlen[i]].clone())
                    for k, v in layers] for i in range(B)]
        return hiddens, kvs

    @staticmethod
    def split(kv: Any, lengths: Sequence[int]) -> list[Any]:
        out, start = [], 0
        for n in lengths:
            out.append([(k[:, start:start + n], v[:, start:start + n]) for k, v in kv])
            start += n
        return out

    @staticmethod
    def _gather(parent: _TrieNode | None) -> Any:
        import torch

        if parent is None or parent.parent is None:
            return None
        chain = [n.payload for n in parent.path()]
        if len(chain) == 1:
            return chain[0]
        return [(torch.cat([c[layer][0] for c in chain], 1), torch.cat([c[layer][1] for c in chain], 1))
                for layer in range(len(chain[0]))]


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


class NativeHost:
    """Runs on a native engine through ``extend_batch``; nodes hold pinned handles."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.last_tokens = 0          # tokens the engine computed in the last run()

    def release(self, payload: Any) -> None:
        self.engine.release([payload])

    def run(self, jobs: Sequence[tuple[_TrieNode | None, list[int]]], *, keep: bool
            ) -> tuple[list[Any], list[Any]]:
        items = []
        for parent, new in jobs:
            if parent is None or parent.parent is None:
                items.append(([], new))
            elif parent.payload is not None:
                items.append((parent.payload, new))
            else:   # a node inside a chain run as one job: name it by its token ids
                items.append(([t for n in parent.path() for t in n.segment], new))
        hidden, handles, self.last_tokens = self.engine.extend_batch_usage(items)
        if not keep:
            self.engine.release(handles)
            return hidden, [None] * len(jobs)
        return hidden, handles

    @staticmethod
    def split(handle: Any, lengths: Sequence[int]) -> list[Any]:
        return [None] * (len(lengths) - 1) + [handle]


class StepScorer:
    """Scores trajectories with a format, a host and a readout (see the module docstring)."""

    def __init__(self, fmt: StepFormat, host: Any, readout: Readout, *, incremental: bool,
                 max_cache_tokens: int = 1 << 16) -> None:
        self.fmt, self.host, self.readout = fmt, host, readout
        self.incremental = incremental
        self.trie = SegmentTrie(max_tokens=max_cache_tokens, on_evict=host.release)
        self._step_cache: dict[tuple[str, int], tuple[int, ...]] = {}
        self._prompt_cache: dict[str, tuple[int, ...]] = {}

    def _prompt(self, problem: Problem) -> tuple[int, ...]:
        key = problem.question
        ids = self._prompt_cache.get(key)
        if ids is None:
            ids = tuple(self.fmt.prompt_ids(problem))
            if len(self._prompt_cache) > 1024:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids
        return ids

    def _step(self, step: str, index: int) -> tuple[int, ...]:
        key = (step, index)
        ids = self._step_cache.get(key)
        if ids is None:
            ids = tuple(self.fmt.step_ids(step, index))
            if not ids:
                raise ValueError(f"step {index} ({step!r}) tokenizes to no tokens.")
            if len(self._step_cache) > 65536:
                self._step_cache.clear()
            self._step_cache[key] = ids
        return ids

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        check_steps(trajectories)
        prompt = self._prompt(problem)
        segs = [[prompt] + [self._step(s, j) for j, s in enumerate(steps)]
                for steps in trajectories]
        if self.incremental:
            scores, run, cached = self._score_cached(segs)
        else:
            scores, run, cached = self._score_full(segs)
        return ScoreOutput(scores=tuple(tuple(s) for s in scores),
                           usage=VerifierUsage(calls=len(trajectories), tokens=run,
                                               cached_tokens=cached))

    # -- whole-trajectory rescoring ----------------------------------------------------
    def _score_full(self, segs: list[list[tuple[int, ...]]]):
        probe = list(self.fmt.probe_ids)
        jobs, reads = [], []        # reads[i] = (trajectory, [(step, position)])
        for ti, s in enumerate(segs):
            if probe:
                for t in range(1, len(s)):
                    ids = [x for seg in s[: t + 1] for x in seg] + probe
                    jobs.append((None, ids))
                    reads.append((ti, [(t - 1, len(ids) - 1)]))
            else:
                ids, ends = [], []
                for seg in s:
                    ids.extend(seg)
                    ends.append(len(ids) - 1)
                jobs.append((None, ids))
                reads.append((ti, [(t, e) for t, e in enumerate(ends[1:])]))
        scores = [[0.0] * (len(s) - 1) for s in segs]
        run = 0
        if jobs:
            hiddens, _ = self.host.run(jobs, keep=False)
            run = self.host.last_tokens
            import torch

            rows = [h[p] for h, (_, rs) in zip(hiddens, reads) for _, p in rs]
            vals = self.readout(torch.stack(rows)).tolist() if rows else []
            k = 0
            for ti, rs in reads:
                for t, _ in rs:
                    scores[ti][t] = float(vals[k])
                    k += 1
        return scores, run, 0

    # -- incremental, prefix-cached ----------------------------------------------------
    def _score_cached(self, segs: list[list[tuple[int, ...]]]):
        import torch

        trie, probe = self.trie, list(self.fmt.probe_ids)
        tick = next(trie._clock)
        paths: list[list[_TrieNode]] = []
        cached = 0
        pending: list[_TrieNode] = []
        pend: set[_TrieNode] = set()
        for s in segs:
            node, path = trie.root, []
            for seg in s:
                node, _ = trie.child(node, seg)
                if node.computed or node in pend:   # cached, or run once for an earlier row
                    cached += len(seg)
                else:
                    pend.add(node)
                    pending.append(node)
                path.append(node)
            trie.touch(node)
            paths.append(path)
        run = 0
        # waves: chains of pending nodes over a computed parent, one batched forward each
        while pend:
            heads = [n for n in pending if n in pend and n.parent is not None
                     and (n.parent.computed or n.parent is trie.root)]
            jobs, chains = [], []
            for head in heads:
                chain = [head]
                while True:
                    kids = [c for c in chain[-1].children.values() if c in pend]
                    if len(kids) != 1:
                        break
                    chain.append(kids[0])
                jobs.append((head.parent, [t for n in chain for t in n.segment]))
                chains.append(chain)
            hiddens, kvs = self.host.run(jobs, keep=True)
            run += self.host.last_tokens
            rows, targets = [], []
            for chain, h, kv in zip(chains, hiddens, kvs):
                lengths = [len(n.segment) for n in chain]
                parts = self.host.split(kv, lengths)
                end = -1
                for n, part, ln in zip(chain, parts, lengths):
                    end += ln
                    trie.mark_computed(n, part)
                    pend.discard(n)
                    if not probe and n.parent is not trie.root:
                        rows.append(h[end])
                        targets.append(n)
            if rows:
                vals = self.readout(torch.stack(rows)).tolist()
                for n, v in zip(targets, vals):
                    n.score = float(v)
        if probe:
            need = [n for n in {id(n): n for p in paths for n in p[1:]}.values()
                    if n.probe_score is None]
            if need:
                hiddens, _ = self.host.run([(n, probe) for n in need], keep=False)
                run += self.host.last_tokens
                vals = self.readout(torch.stack([h[-1] for h in hiddens])).tolist()
                for n, v in zip(need, vals):
                    n.probe_score = float(v)
            needed_probe = sum(len(p) - 1 for p in paths) * len(probe)
            cached += needed_probe - len(probe) * len(need)
        scores = [[(n.probe_score if probe else n.score) for n in p[1:]] for p in paths]
        for p in paths:
            trie.touch(p[-1])
        trie.evict(keep_tick=tick)
        return scores, run, max(cached, 0)

    def clear(self) -> None:
        self.trie.clear()


# -- the base of every model-based verifier --------------------------------------------------
class ModelVerifierConfig(Frozen):
    """The settings every model-based verifier shares; a subclass adds its ``name`` (and the
    checkpoint it defaults to as ``model``)."""

    model: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    incremental: bool = True
    max_cache_tokens: int = Field(default=65536, gt=0)

    def scorer_options(self) -> dict[str, Any]:
        return {"incremental": self.incremental, "max_cache_tokens": self.max_cache_tokens}


class ModelVerifier:
    """A verifier that scores through a :class:`StepScorer` over its :class:`StepFormat`."""

    format: StepFormat
    scorer: StepScorer
    incremental: bool

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        return self.scorer.score(problem, trajectories)


class LogitPairPRM(ModelVerifier):
    """A causal-LM PRM read as P(plus) against P(minus) from its own LM head at each step's
    last token (Math-Shepherd, RLHFlow), hosted by torch."""

    def __init__(self, fmt: StepFormat, model: Any, tokenizer: Any, *, plus_id: int,
                 minus_id: int, incremental: bool = True, max_cache_tokens: int = 65536) -> None:
        head = model.get_output_embeddings()
        readout = LogitPairReadout(head.weight, plus_id, minus_id, getattr(head, "bias", None))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.format, self.incremental = fmt, incremental
        self.scorer = StepScorer(fmt, TorchHost(model.base_model, pad_id=pad), readout,
                                 incremental=incremental, max_cache_tokens=max_cache_tokens)


def build_causal_lm_prm(config: ModelVerifierConfig, cls: Callable[..., ModelVerifier]
                        ) -> ModelVerifier:
    """Load ``config.model`` as a transformers causal LM and build ``cls(model, tokenizer,
    incremental=..., max_cache_tokens=...)`` on it."""
    from ttc.verifiers.hf_models import load_causal_lm

    model, tok = load_causal_lm(config.model, dtype=config.dtype, device=config.device)
    return cls(model, tok, **config.scorer_options())
