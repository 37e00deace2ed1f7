"""A seeded stochastic model of step-by-step solving: a real backend for search research.

Contract: implements the :class:`~ttc.protocols.Generator` protocol with no model.
Each problem has a difficulty ``d`` in [0, 1]; each generated step is correct with
probability ``1 - max_step_error * d``; an error is absorbing; a trajectory ends after
about ``num_steps`` steps with ``\\boxed{answer}``, right only if every step was right,
otherwise drawn from a small set of wrong answers (Zipf-weighted, so wrong votes
collide). Steps have log-normal token lengths. Text is words; the simulated tokenizer
maps each word to one token id, so tokens and text always agree.

Each step's text carries an 8-hex-digit tag whose keyed hash (``world_seed``) encodes
whether the step is correct: a verifier built with the same ``world_seed``
(``ttc.verifiers.simulated``) can read the truth from the text alone, the way a real PRM
reads a real step. Strategies never look at tags.

Accounting is honest and mirrors a paged engine:

    handles form a tree; each owns the tokens it added
      root(prompt P) ── h1 (step, 40 tok) ── h3 (35 tok)      resident KV tokens =
                    └── h2 (38 tok)                           |union of paths of pinned
    expand(h) : prefix tokens already resident -> cached_tokens     handles| (+ prompt)
                the prompt on first use        -> prefill_tokens
    release(h): tokens no longer under a pinned handle are freed at once

``modelled_seconds`` accumulates what the work would take on a real engine
(a prefill rate and a per-decode-step cost that grows with batch), for overhead benches.
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.registry import BACKENDS
from ttc.engine.handles import HandleTable
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason, Frozen,
                       GenerationUsage, Handle, Problem)

_FILLER = ("we", "compute", "the", "value", "of", "this", "term", "then", "simplify",
           "and", "substitute", "into", "equation", "so", "that", "it", "follows", "by",
           "adding", "both", "sides", "which", "gives", "a", "result", "for", "next",
           "quantity", "using", "previous", "step", "now", "check", "carefully")


class SimulatedBackendConfig(Frozen):
    name: Literal["simulated"] = "simulated"
    world_seed: int = 0
    max_step_error: float = Field(default=0.5, ge=0.0, le=1.0)
    default_difficulty: float | None = Field(default=None, ge=0.0, le=1.0)
    mean_step_tokens: PositiveInt = 40
    step_tokens_sigma: float = Field(default=0.4, ge=0.0)
    num_wrong_answers: PositiveInt = 6
    wrong_answer_skew: float = Field(default=0.5, ge=0.0)   # Zipf exponent of wrong answers
    prompt_tokens: PositiveInt = 120
    vocab_size: PositiveInt = 32000
    kv_bytes_per_token: PositiveInt = 23040      # SmolLM2-135M in bf16
    prefill_tokens_per_second: float = Field(default=2000.0, gt=0)
    decode_step_seconds: float = Field(default=0.02, gt=0)
    decode_seconds_per_branch: float = Field(default=0.002, ge=0)


def step_tag(world_seed: int, correct: bool, rng: random.Random) -> str:
    """An 8-hex-digit tag whose keyed hash bit equals ``correct``."""
    while True:
        tag = f"{rng.getrandbits(32):08x}"
        if tag_is_correct(world_seed, tag) == correct:
            return tag


def tag_is_correct(world_seed: int, tag: str) -> bool:
    digest = hashlib.blake2b(tag.encode(), key=str(world_seed).encode()[:64] or b"0",
                             digest_size=1).digest()
    return bool(digest[0] & 1)


def _hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(),
                          "little")


@dataclass(frozen=True, slots=True)
class ProblemModel:
    """The hidden facts of one simulated problem."""

    difficulty: float
    num_steps: int
    gold: str
    wrong: tuple[str, ...]
    wrong_weights: tuple[float, ...]
    prompt_words: tuple[str, ...]


@dataclass(slots=True)
class _Seq:
    """One handle: a token sequence and where the simulated solver stands in it."""

    problem: ProblemModel
    parent: int | None
    own_tokens: int                 # tokens this handle added to its parent
    length: int                     # tokens from the start of the prompt
    steps_done: int
    correct: bool
    ended: bool
    pending: tuple[str, ...] = ()   # words of a step cut by max_tokens, still to emit
    pinned: bool = True
    value: float | None = None
    computed: bool = False          # prompt handles: prefilled already
    children: int = 0
    words: tuple[str, ...] = ()     # the words this handle added to its parent


@dataclass
class _Draft:
    words: list[str] = field(default_factory=list)
    steps_done: int = 0
    correct: bool = True
    ended: bool = False
    finish: FinishReason = FinishReason.STOP
    pending: tuple[str, ...] = ()


class SimulatedGenerator:
    """The simulated engine. See the module docstring for the model."""

    def __init__(self, config: SimulatedBackendConfig | None = None) -> None:
        self.config = config or SimulatedBackendConfig()
        self._seqs: HandleTable[_Seq] = HandleTable()
        self._models: dict[tuple[str, str], ProblemModel] = {}
        self.peak_kv_bytes = 0
        self.modelled_seconds = 0.0
        # What this engine "ran" over its life (a ledger must add up to these).
        self.prefill_tokens_run = 0
        self.decode_tokens_run = 0

    # -- problems ----------------------------------------------------------------------
    def problem_model(self, problem: Problem) -> ProblemModel:
        key = (problem.id, problem.question)
        if key not in self._models:
            self._models[key] = self._make_model(problem)
        return self._models[key]

    def _make_model(self, problem: Problem) -> ProblemModel:
        cfg = self.config
        h = _hash_int(cfg.world_seed, problem.question)
        meta = problem.metadata
        if "difficulty" in meta:
            difficulty = float(meta["difficulty"])
            if not 0.0 <= difficulty <= 1.0:
                raise ValueError(f"problem {problem.id!r}: metadata.difficulty must be in "
                                 f"[0, 1]; got {difficulty!r}.")
        elif cfg.default_difficulty is not None:
            difficulty = cfg.default_difficulty
        else:
            difficulty = (h % 1000) / 999
        num_steps = int(meta.get("num_steps", 3 + (h >> 10) % 5))
        gold = problem.answer if problem.answer is not None else str(10 + (h >> 20) % 990)
        rng = random.Random(h)
        wrong: list[str] = []
        while len(wrong) < cfg.num_wrong_answers:
            cand = str(rng.randint(1, 999))
            if cand != gold and cand not in wrong:
                wrong.append(cand)
        weights = tuple(1.0 / (i + 1) ** cfg.wrong_answer_skew for i in range(len(wrong)))
        words = tuple(_FILLER[(h >> (i % 48)) % len(_FILLER)]
                      for i in range(cfg.prompt_tokens))
        return ProblemModel(difficulty=difficulty, num_steps=num_steps, gold=gold,
                            wrong=tuple(wrong), wrong_weights=weights, prompt_words=words)

    def step_accuracy(self, problem: Problem) -> float:
        return 1.0 - self.config.max_step_error * self.problem_model(problem).difficulty

    # -- Generator protocol ------------------------------------------------------------
    def root(self, problem: Problem) -> Handle:
        model = self.problem_model(problem)
        n = len(model.prompt_words)
        return self._new(_Seq(problem=model, parent=None, own_tokens=n, length=n,
                              steps_done=0, correct=True, ended=False))

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        prefill = cached = 0
        drafts: list[list[_Draft]] = []
        for req in requests:
            seq = self._live(req.prefix)
            if seq.ended:
                raise ValueError(f"handle {req.prefix!r} ended (EOS); it cannot be expanded.")
            if seq.parent is None and not seq.computed:
                prefill += seq.length           # the prompt, run once
                seq.computed = True
            else:
                cached += seq.length            # every prefix token is resident
            base = _hash_int(self.config.world_seed, req.params.seed, req.prefix,
                             seq.length, seq.children)
            drafts.append([self._draft(seq, req, random.Random(base + i))
                           for i in range(req.n)])
            seq.children += req.n
        self._apply_token_limit([d for ds in drafts for d in ds], token_limit)
        outputs: list[tuple[Continuation, ...]] = []
        generated = 0
        for req, ds in zip(requests, drafts):
            parent = self._seqs.get(req.prefix)
            conts = []
            for d in ds:
                generated += len(d.words)
                conts.append(self._commit(req.prefix, parent, d))
            outputs.append(tuple(conts))
        branches = sum(len(ds) for ds in drafts)
        longest = max((len(d.words) for ds in drafts for d in ds), default=0)
        self.modelled_seconds += prefill / self.config.prefill_tokens_per_second + longest * (
            self.config.decode_step_seconds + branches * self.config.decode_seconds_per_branch)
        self.peak_kv_bytes = max(self.peak_kv_bytes, self.kv_bytes())
        self.prefill_tokens_run += prefill
        self.decode_tokens_run += generated
        return ExpandOutput(continuations=tuple(outputs), usage=GenerationUsage(
            prefill_tokens=prefill, cached_tokens=cached, generated_tokens=generated,
            peak_kv_bytes=self.peak_kv_bytes))

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        for h in handles:
            seq = self._live(h)
            seq.pinned = True
            if value is not None:
                seq.value = value

    def release(self, handles: Sequence[Handle]) -> None:
        for h in handles:
            seq = self._seqs.find(h)
            if seq is None:
                continue
            seq.pinned = False
        self._seqs.sweep()

    def kv_bytes(self) -> int:
        return self.resident_tokens() * self.config.kv_bytes_per_token

    def embed(self, handles: Sequence[Handle]) -> list[list[float]]:
        """A 64-dim unit vector per handle for its last step (``SupportsEmbeddings``).

        It models what a policy model's hidden state holds about a step: what the step
        established. Two steps mean the same when they are at the same step number and
        in the same reasoning state (right so far, or wrong since the same first error),
        or state the same answer; such steps embed almost identically (cosine distance
        below 0.01), whatever their filler words. A small hashed bag of the step's words
        (weight 0.1) tells different wordings apart.
        """
        out: list[list[float]] = []
        for h in handles:
            seq = self._live(h)
            words = seq.words
            if seq.ended and words:
                key: tuple[object, ...] = ("answer", words[-1])
            elif seq.correct:
                key = ("step", seq.steps_done, "ok")
            else:
                key = ("step", seq.steps_done, "wrong since", self._first_error(h))
            vec = [0.0] * 64
            sem = _hash_int("embed", key)
            for i in range(64):
                vec[i] = 1.0 if (sem >> i) & 1 else -1.0
            for w in words:
                wh = _hash_int("embed-word", w)
                vec[wh % 64] += 0.1 * 8.0 / max(1, len(words)) ** 0.5
            norm = math.sqrt(sum(v * v for v in vec))
            out.append([v / norm for v in vec])
        return out

    def _first_error(self, handle: int) -> int:
        """The earliest ancestor of a wrong handle whose step was wrong."""
        first = handle
        for hid, seq in list(self._seqs.lineage(handle))[1:]:
            if seq.correct:
                break
            first = hid
        return first

    # -- introspection for tests and benches -------------------------------------------
    def resident_tokens(self) -> int:
        return sum(s.own_tokens for s in self._seqs.values())

    @property
    def live_handles(self) -> int:
        return sum(1 for s in self._seqs.values() if s.pinned)

    def text_of(self, handle: Handle) -> str:
        self._seqs.get(handle)                     # a clear error for a dead handle
        words: list[str] = []
        for _, seq in self._seqs.lineage(handle):  # type: ignore[arg-type]
            if seq.parent is not None:
                words[:0] = seq.words
        return " ".join(words)

    # -- internals ---------------------------------------------------------------------
    def _new(self, seq: _Seq, words: tuple[str, ...] = ()) -> int:
        seq.words = words
        return self._seqs.add(seq)

    def _live(self, handle: Handle) -> _Seq:
        seq = self._seqs.find(handle)
        if seq is None or not (seq.pinned or self._has_pinned_descendant(handle)):
            raise ValueError(f"handle {handle!r} is not live (released or never issued).")
        return seq

    def _has_pinned_descendant(self, handle: Handle) -> bool:
        return any(handle in (h for h, _ in self._seqs.lineage(hid))
                   for hid, s in self._seqs.items() if s.pinned)

    def _draft(self, seq: _Seq, req: ExpandRequest, rng: random.Random) -> _Draft:
        """Plan one continuation: whole steps until a stop, EOS or max_tokens."""
        cfg = self.config
        model = seq.problem
        stop_at_step = bool(req.params.stop)   # any stop string ends at a step boundary
        d = _Draft(steps_done=seq.steps_done, correct=seq.correct)
        budget = req.params.max_tokens
        queue = list(seq.pending)
        # NOTE: a step cut earlier is resumed first; if it was the answer step, the
        # trajectory ends once it is out (steps_done counts steps started).
        d.ended = bool(queue) and seq.steps_done >= model.num_steps
        p_ok = 1.0 - cfg.max_step_error * model.difficulty
        greedy = req.params.temperature == 0.0
        while True:
            if not queue:
                queue = self._next_step_words(model, d, rng, p_ok, greedy)
            room = budget - len(d.words)
            if len(queue) > room:
                d.words.extend(queue[:room])
                d.pending = tuple(queue[room:])
                d.ended = False
                d.finish = FinishReason.MAX_TOKENS
                return d
            d.words.extend(queue)
            queue = []
            if d.ended:
                d.finish = FinishReason.EOS
                return d
            if stop_at_step:
                d.finish = FinishReason.STOP
                return d

    def _next_step_words(self, model: ProblemModel, d: _Draft, rng: random.Random,
                         p_ok: float, greedy: bool) -> list[str]:
        cfg = self.config
        d.steps_done += 1
        if d.steps_done >= model.num_steps:        # the final step states the answer
            d.ended = True
            if d.correct:
                answer = model.gold
            else:
                answer = rng.choices(model.wrong, weights=model.wrong_weights)[0]
            return ["Therefore", "the", "answer", "is", f"\\boxed{{{answer}}}."]
        ok = d.correct and (p_ok >= 0.5 if greedy else rng.random() < p_ok)
        d.correct = ok
        mu = math.log(cfg.mean_step_tokens) - cfg.step_tokens_sigma ** 2 / 2
        length = max(6, min(4 * cfg.mean_step_tokens,
                            int(rng.lognormvariate(mu, cfg.step_tokens_sigma))))
        tag = step_tag(cfg.world_seed, ok, rng)
        filler = [rng.choice(_FILLER) for _ in range(length - 4)]
        return ["Step", f"{d.steps_done}:", *filler, f"[{tag}]", "\n\n"]

    def _apply_token_limit(self, drafts: list[_Draft], limit: int | None) -> None:
        """Cut drafts as lockstep decoding would when the call may generate ``limit``."""
        if limit is None:
            return
        lengths = [len(d.words) for d in drafts]
        if sum(lengths) <= limit:
            return
        lo, hi = 0, max(lengths)
        while lo < hi:               # largest t with sum(min(L, t)) <= limit
            mid = (lo + hi + 1) // 2
            if sum(min(x, mid) for x in lengths) <= limit:
                lo = mid
            else:
                hi = mid - 1
        for d in drafts:
            if len(d.words) > lo:
                d.pending = tuple(d.words[lo:]) + d.pending
                del d.words[lo:]
                d.finish = FinishReason.BUDGET
                d.ended = False

    def _commit(self, parent_id: int, parent: _Seq, d: _Draft) -> Continuation:
        words = tuple(d.words)
        seq = _Seq(problem=parent.problem, parent=parent_id, own_tokens=len(words),
                   length=parent.length + len(words), steps_done=d.steps_done,
                   correct=d.correct, ended=d.ended, pending=d.pending)
        hid = self._new(seq, words)
        ids = tuple(_hash_int("tok", w) % self.config.vocab_size for w in words)
        text = _join_words(words)
        logprobs = tuple(-0.3 - (_hash_int("lp", hid, i) % 1000) / 1000 for i in range(len(ids)))
        return Continuation(handle=hid, token_ids=ids, text=text, logprobs=logprobs,
                            finish=d.finish)


def _join_words(words: Sequence[str]) -> str:
    out: list[str] = []
    for w in words:
        if w == "\n\n":
            out.append(w)
        elif out and not out[-1].endswith("\n"):
            out.append(" " + w)
        else:
            out.append(w)
    return "".join(out)


@BACKENDS.register(SimulatedBackendConfig)
def build_simulated(config: SimulatedBackendConfig, **_: object) -> SimulatedGenerator:
    return SimulatedGenerator(config)
