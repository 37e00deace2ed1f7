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

Token signals (DeepConf, RPC): with ``logprob_auroc`` set, every token's log-prob and
top-k log-probs come from a per-step latent that is higher on right steps than on wrong
ones with that AUROC (:meth:`SimulatedGenerator._step_quality`,
:func:`token_top_logprobs`); ``SamplingParams.stop_rules`` run on every drafted token, as
inside a decode batch. ``probe`` answers "what is your answer now?" from the trace's
progress (Dynasor). Signals and probes never change the solving draws, so results that
read no log-probs are the same with them on or off. ``greedy_can_err`` lets greedy steps
be wrong (right with probability p_ok, fixed per prefix and step).

``modelled_seconds`` accumulates what the work would take on a real engine
(a prefill rate and a per-decode-step cost that grows with batch), for overhead benches.

What a call is for: the request says it (``ExpandRequest.purpose``, ``probe(purpose=)``,
a :class:`~ttc.types.Purpose`), and the simulator models that kind of call; it never reads
a prompt's or a suffix's wording to decide, so rewording a strategy's prompt changes
nothing here but the prompt's token count (every prompt is run in full: ``prompt_tokens``
template words, then the question's words).

Thinking mode (``thinking=True``, docs/algorithms.md "Budget forcing"): the prompt ends with the start
delimiter ``<think>``; the model thinks in tagged steps and, after its natural length
(``num_steps - 1`` steps, plus ``wait_steps`` more for every forced "Wait"), samples the
one-token end delimiter ``</think>``, then states ``\\boxed{answer}`` and ends. The answer
converges late: each branch draws ``u ~ U(0, 1)`` once, and after ``t`` thinking tokens
its belief is right iff ``u < q(t) = p_max (1 - exp(-t / tau))``, with
``p_max = 1 - max_step_error * d / 2`` and ``tau = converge_tokens * (0.5 + d)``; so a
branch cut short (a cap) answers worse and one extended ("Wait") answers better, by
construction. Stop rules (:mod:`ttc.stopping`) run on every token of a thinking-mode
branch, with ``Force`` and ``Replace`` honoured in place; a forced token takes a decode
step, so it is a generated token (as on the native engine), and each continuation
reports its count in ``stats["forced_tokens"]``.

Model pairs (SpecReason, Archon): an engine built with ``peer=`` shares the peer's
handles and problems (one tokenizer, one world), keeps its own KV count, modelled time
and step accuracy, and charges as prefill the tokens of a handle it has not run yet (a
step the other model wrote), once. :func:`small_model_config` derives the draft model
of a pair. A ``Purpose.JUDGE`` probe answers a judge's question: one digit
0-9 that reads whether the trajectory so far is right, with Gaussian noise
``judge_noise`` on a 0-1 scale around 0.85 for a right trajectory and 0.35 for a wrong
one (with noise 0.2, a judge threshold of 7 keeps about 74% of right steps and 3% of
wrong ones).

Fusing (``Purpose.FUSE``, Archon's fuser): the call reads the ``\\boxed{...}`` answers
its prompt quotes (before a ``Critiques:`` header, if any), and the model's answer is one
of them, the gold one weighted
``1 + fuse_skill`` times its count and the others by their counts; steps are tagged by
that choice. Critique texts have no effect (the simulator cannot read advice).
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.registry import BACKENDS
from ttc.engine.handles import HandleTable
from ttc.stopping import Force, Replace, Stop
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason, Frozen,
                       GenerationUsage, Handle, Problem, Purpose, SamplingParams)

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
    # Thinking mode and the judge (see the module docstring).
    thinking: bool = False
    think_start: str = "<think>"
    think_end: str = "</think>"
    converge_tokens: PositiveInt = 100
    wait_steps: PositiveInt = 1
    judge_noise: float = Field(default=0.2, ge=0.0)
    fuse_skill: float = Field(default=1.0, ge=0.0)
    # Token signals (see :func:`token_top_logprobs`). None keeps the old hash-noise
    # log-probs, which say nothing about correctness.
    logprob_auroc: float | None = Field(default=None, ge=0.5, le=1.0)
    logprob_token_noise: float = Field(default=0.5, ge=0.0)
    # Greedy decoding: False = a greedy step is right whenever p_ok >= 0.5 (never wrong on
    # easy problems); True = right with probability p_ok, fixed per prefix (so greedy is
    # deterministic, but can be wrong).
    greedy_can_err: bool = False
    # Probes (Dynasor): at progress f = steps finished / steps needed, a probe states the
    # answer the trace holds with probability f ** probe_exponent; otherwise it hedges or
    # guesses.
    probe_exponent: float = Field(default=2.0, gt=0.0)


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
    shown: tuple[str, ...] = ()     # answers quoted in the prompt (read by a FUSE call only)
    question_words: int = 0         # of prompt_words: the question's (not in draw keys)


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
    seen_by: set = field(default_factory=set)   # engines of a pair that ran these tokens
    think_open: bool = False        # thinking mode: inside <think> ... </think>
    think_tokens: int = 0           # sampled thinking tokens from the prompt to here
    waits: int = 0                  # thinking ends replaced by "Wait" so far
    belief: float = -1.0            # the branch's u (thinking mode); -1 = not drawn yet
    pending_quality: tuple[float, ...] = ()   # token signals of ``pending``
    quality: tuple[float, ...] = ()           # token signals of ``words``


@dataclass
class _Draft:
    words: list[str] = field(default_factory=list)
    steps_done: int = 0
    correct: bool = True
    ended: bool = False
    finish: FinishReason = FinishReason.STOP
    pending: tuple[str, ...] = ()
    forced: list[bool] = field(default_factory=list)    # per word: forced, not sampled
    think_open: bool = False
    think_tokens: int = 0
    waits: int = 0
    belief: float = -1.0
    quality: list[float] = field(default_factory=list)   # one latent signal per word
    pending_quality: tuple[float, ...] = ()
    stop_reason: str | None = None
    stats: dict[str, float] = field(default_factory=dict)
    quoted: tuple[str, ...] = ()    # a FUSE call: the answers its prompt quotes


class SimulatedGenerator:
    """The simulated engine. See the module docstring for the model."""

    can_replace_tokens = True

    def __init__(self, config: SimulatedBackendConfig | None = None, *,
                 peer: "SimulatedGenerator | None" = None) -> None:
        self.config = config or SimulatedBackendConfig()
        if peer is not None:
            _check_peer(self.config, peer.config)
        # NOTE: a pair shares one handle table, one problem world and one vocabulary;
        # ``seen_by`` on each sequence says which engine has run its tokens.
        self._seqs: HandleTable[_Seq] = peer._seqs if peer else HandleTable()
        self._models: dict[tuple[str, str], ProblemModel] = peer._models if peer else {}
        self._vocab: dict[int, str] = peer._vocab if peer else {}
        self._engine_id = (peer._engine_id + 1) if peer else 0
        self._paired = peer is not None
        if peer is not None:
            peer._paired = True
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
        # NOTE: every prompt is run in full: a template of ``prompt_tokens`` words, then
        # the question's words. Its text decides nothing else (``Purpose`` does).
        words = words + tuple(problem.question.split())
        shown = shown_answers(problem.question)
        if cfg.thinking:
            words = words + (cfg.think_start,)      # thinking is opened by the prompt
        return ProblemModel(difficulty=difficulty, num_steps=num_steps, gold=gold,
                            wrong=tuple(wrong), wrong_weights=weights, prompt_words=words,
                            shown=shown, question_words=len(problem.question.split()))

    def step_accuracy(self, problem: Problem) -> float:
        return 1.0 - self.config.max_step_error * self.problem_model(problem).difficulty

    # -- Generator protocol ------------------------------------------------------------
    def root(self, problem: Problem) -> Handle:
        model = self.problem_model(problem)
        n = len(model.prompt_words)
        return self._new(_Seq(problem=model, parent=None, own_tokens=n, length=n,
                              steps_done=0, correct=True, ended=False,
                              think_open=self.config.thinking))

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        prefill = cached = 0
        drafts: list[list[_Draft]] = []
        for req in requests:
            seq = self._live(req.prefix)
            if seq.ended:
                raise ValueError(f"handle {req.prefix!r} ended (EOS); it cannot be expanded.")
            # The prompt is run once; tokens this engine sampled are resident; tokens
            # the other model of a pair wrote are run (prefilled) once, here.
            unseen = self._run_unseen(req.prefix)
            prefill += unseen
            cached += seq.length - unseen
            base = _hash_int(self.config.world_seed, req.params.seed, req.prefix,
                             _draw_position(seq), seq.children)
            drafts.append([self._draft(seq, req, random.Random(base + i), salt=(base, i))
                           for i in range(req.n)])
            if req.purpose not in (Purpose.GENERATE, Purpose.FUSE):
                raise ValueError(f"the simulated engine expands with purpose generate or "
                                 f"fuse; got {req.purpose.value!r} (probe and judge calls "
                                 f"are probes: use probe(..., purpose=...)).")
            seq.children += req.n
            if req.params.stop_rules and not self.config.thinking:   # thinking: run inline
                for d in drafts[-1]:
                    self._run_stop_rules(d, req.params)
        self._apply_token_limit([d for ds in drafts for d in ds], token_limit)
        outputs: list[tuple[Continuation, ...]] = []
        generated = 0
        for req, ds in zip(requests, drafts):
            parent = self._seqs.get(req.prefix)
            conts = []
            for d in ds:
                forced = sum(d.forced[:len(d.words)])
                # NOTE: a forced token takes a decode step, as on the native engine: it is
                # a generated token (and reported again in stats["forced_tokens"]).
                generated += len(d.words)
                if forced:
                    d.stats["forced_tokens"] = float(forced)
                conts.append(self._commit(req.prefix, parent, d, req.params))
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

    def embed_usage(self, handles: Sequence[Handle]) -> tuple[list[list[float]], int]:
        """:meth:`embed`, plus the tokens it ran: a handle's tokens this engine has not run
        yet (a step the other model of a pair wrote) are prefilled once, as on the native
        engine, where a computed handle's vector is its stored hidden state."""
        computed = sum(self._run_unseen(h) for h in handles)
        self.prefill_tokens_run += computed
        self.modelled_seconds += computed / self.config.prefill_tokens_per_second
        return self.embed(handles), computed

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

    # -- token signals, stop rules and probes (DeepConf, Dynasor) ----------------------
    supports_token_rules = True     # returns top_logprobs and runs stop_rules in decoding

    @property
    def _signals(self) -> bool:
        return self.config.logprob_auroc is not None

    def _greedy_ok(self, p_ok: float, key: tuple) -> bool:
        """Whether the greedy step ``key`` (prefix handle, its length, steps before) is right."""
        if not self.config.greedy_can_err:
            return p_ok >= 0.5
        u = (_hash_int(self.config.world_seed, "greedy", key) % 1_000_000 + 0.5) / 1_000_000
        return u < p_ok

    def _step_quality(self, words: Sequence[str], correct: bool,
                      salt: tuple[int, int]) -> list[float]:
        """One latent signal per word of a step: x = +-m + z_step + noise * z_token.

        ``m = Phi^-1(logprob_auroc) / sqrt(2)`` (+ for a step after which the trajectory is
        still right, - once it is wrong), so the step latent ``+-m + z_step`` separates
        right from wrong steps with AUROC ``logprob_auroc``; token noise averages out over
        a window. With ``logprob_auroc=None`` m = 0: the signal says nothing.
        Seeded by hashes, never by the step's sampling rng (the draws are unchanged).
        """
        auroc = self.config.logprob_auroc
        m = 0.0 if auroc is None else NormalDist().inv_cdf(min(auroc, 1 - 1e-9)) / math.sqrt(2)
        rng = random.Random(_hash_int("quality", self.config.world_seed, salt, tuple(words)))
        q = (m if correct else -m) + rng.gauss(0.0, 1.0)
        noise = self.config.logprob_token_noise
        return [q + noise * rng.gauss(0.0, 1.0) for _ in words]

    def _run_stop_rules(self, d: _Draft, params: SamplingParams) -> None:
        """Feed every token of a draft to the request's stop rules, as decoding would.

        A rule's ``Stop`` ends the draft at that token (``FinishReason.RULE``); EOS and stop
        strings on the same token take precedence (:mod:`ttc.stopping`).
        """
        states = [spec.start() for spec in params.stop_rules]
        k = max(spec.top_k for spec in params.stop_rules)
        last = len(d.words) - 1
        for i, (w, x) in enumerate(zip(d.words, d.quality)):
            tid = self._token_id(w)
            top = token_top_logprobs(x, max(k, 1), tid, self.config.vocab_size)
            for spec, st in zip(params.stop_rules, states):
                action = st.on_token(tid, top[0][1], top[:k] if k else None, forced=False)
                if isinstance(action, Force):
                    raise ValueError(f"the simulated engine cannot force tokens; stop rule "
                                     f"{spec!r} asked to force {action.text!r}.")
                if isinstance(action, Stop):
                    if i == last and d.finish in (FinishReason.EOS, FinishReason.STOP):
                        break                   # EOS / stop string win on the same token
                    del d.words[i + 1:]
                    del d.quality[i + 1:]
                    d.pending, d.pending_quality = (), ()
                    d.ended, d.finish = True, FinishReason.RULE
                    d.stop_reason = f"rule:{action.reason}"
                    break
            if d.finish is FinishReason.RULE:
                break
        for st in states:
            d.stats.update(st.summary())

    reads_purpose = True    # probe(purpose=...) and ExpandRequest.purpose model the call

    def probe(self, handle: Handle, suffix_tokens: Sequence[int], *, max_new: int,
              params: SamplingParams | None = None, n: int = 1,
              purpose: Purpose = Purpose.PROBE) -> ExpandOutput:
        """What the model would answer if asked now (a throw-away continuation).

        At progress ``f`` = steps finished / steps needed, the probe states the answer the
        trajectory holds (the gold answer while it is right; once wrong, a wrong answer
        fixed by its first error) with probability ``f ** probe_exponent``; otherwise it
        hedges ("hmm, wait") or guesses a wrong answer, evenly. The text is what follows a
        ``\boxed{`` suffix: ``"123}"``. Charged like a real probe on shared KV: the suffix
        is prefilled, the handle's tokens are cached, the probe's words are generated.
        ``purpose=Purpose.JUDGE`` asks for a score instead (:meth:`_judge_probe`); the
        suffix's words are never read.
        """
        if max_new < 1:
            raise ValueError(f"probe max_new must be >= 1; got {max_new!r}.")
        if n < 1:
            raise ValueError(f"probe n must be >= 1; got {n!r}.")
        seq = self._live(handle)
        if purpose is Purpose.JUDGE:
            return self._judge_probe(handle, seq, len(suffix_tokens), n)
        if purpose is not Purpose.PROBE:
            raise ValueError(f"a simulated probe asks for an answer (purpose probe) or a "
                             f"score (purpose judge); got {purpose!r}.")
        model = seq.problem
        done = seq.steps_done - (1 if seq.pending else 0)
        f = 1.0 if seq.ended else min(1.0, done / model.num_steps)
        if seq.correct:
            held = model.gold
        else:
            h = _hash_int(self.config.world_seed, "belief", self._first_error(handle))
            held = random.Random(h).choices(model.wrong, weights=model.wrong_weights)[0]
        seed = params.seed if params is not None else None
        conts = []
        generated = 0
        for i in range(n):
            rng = random.Random(_hash_int(self.config.world_seed, "probe", handle, seed, i))
            if rng.random() < f ** self.config.probe_exponent:
                words = [f"{held}}}."]
            elif rng.random() < 0.5:
                words = ["hmm,", "wait"]
            else:
                words = [f"{rng.choices(model.wrong, weights=model.wrong_weights)[0]}}}."]
            words = words[:max_new]
            generated += len(words)
            ids = tuple(self._token_id(w) for w in words)
            conts.append(Continuation(handle=None, token_ids=ids, text=_join_words(words),
                                      logprobs=tuple(-0.1 for _ in ids),
                                      finish=FinishReason.EOS, stop_reason="eos"))
        unseen = self._run_unseen(handle)      # a pair's other model wrote these
        prefill = unseen + len(suffix_tokens)
        self.modelled_seconds += prefill / self.config.prefill_tokens_per_second + \
            max_new * (self.config.decode_step_seconds + n * self.config.decode_seconds_per_branch)
        self.prefill_tokens_run += prefill
        self.decode_tokens_run += generated
        return ExpandOutput(continuations=(tuple(conts),), usage=GenerationUsage(
            prefill_tokens=prefill, cached_tokens=seq.length - unseen, generated_tokens=generated,
            peak_kv_bytes=self.peak_kv_bytes))

    # -- introspection for tests and benches -------------------------------------------
    def resident_tokens(self) -> int:
        if not self._paired:
            return sum(s.own_tokens for s in self._seqs.values())
        return sum(s.own_tokens for s in self._seqs.values() if self._engine_id in s.seen_by)

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

    def _draft(self, seq: _Seq, req: ExpandRequest, rng: random.Random,
               salt: tuple[int, int]) -> _Draft:
        """Plan one continuation: whole steps until a stop, EOS or max_tokens."""
        if self.config.thinking:
            return self._draft_thinking(seq, req, rng)
        cfg = self.config
        model = seq.problem
        stop_at_step = bool(req.params.stop)   # any stop string ends at a step boundary
        d = _Draft(steps_done=seq.steps_done, correct=seq.correct,
                   quoted=model.shown if req.purpose is Purpose.FUSE else ())
        budget = req.params.max_tokens
        queue = list(seq.pending)
        qual = list(seq.pending_quality)
        # NOTE: a step cut earlier is resumed first; if it was the answer step, the
        # trajectory ends once it is out (steps_done counts steps started).
        d.ended = bool(queue) and seq.steps_done >= model.num_steps
        p_ok = 1.0 - cfg.max_step_error * model.difficulty
        greedy = req.params.temperature == 0.0
        while True:
            if not queue:
                greedy_key = (req.prefix, _draw_position(seq), d.steps_done)
                queue = self._next_step_words(model, d, rng, p_ok, greedy, greedy_key)
                qual = self._step_quality(queue, d.correct, salt)
            room = budget - len(d.words)
            if len(queue) > room:
                d.words.extend(queue[:room])
                d.quality.extend(qual[:room])
                d.pending = tuple(queue[room:])
                d.pending_quality = tuple(qual[room:])
                d.ended = False
                d.finish = FinishReason.MAX_TOKENS
                return d
            d.words.extend(queue)
            d.quality.extend(qual)
            queue, qual = [], []
            if d.ended:
                d.finish = FinishReason.EOS
                return d
            if stop_at_step:
                d.finish = FinishReason.STOP
                return d

    def _next_step_words(self, model: ProblemModel, d: _Draft, rng: random.Random,
                         p_ok: float, greedy: bool, greedy_key: tuple) -> list[str]:
        cfg = self.config
        d.steps_done += 1
        if d.quoted and d.steps_done == 1:         # a fuser settles on a quoted answer
            d.correct = rng.random() < self._fused_gold_chance(model.gold, d.quoted)
        if d.steps_done >= model.num_steps:        # the final step states the answer
            d.ended = True
            if d.correct:
                answer = model.gold
            elif d.quoted and any(a != model.gold for a in d.quoted):
                others = [a for a in d.quoted if a != model.gold]
                answer = rng.choice(others)        # uniform over quotes = by count
            else:
                answer = rng.choices(model.wrong, weights=model.wrong_weights)[0]
            return ["Therefore", "the", "answer", "is", f"\\boxed{{{answer}}}."]
        if d.quoted:
            ok = d.correct
        else:
            ok = d.correct and (self._greedy_ok(p_ok, greedy_key) if greedy
                                else rng.random() < p_ok)
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
                d.pending_quality = tuple(d.quality[lo:]) + d.pending_quality
                del d.words[lo:]
                del d.quality[lo:]
                d.finish = FinishReason.BUDGET
                d.ended = False

    def _commit(self, parent_id: int, parent: _Seq, d: _Draft,
                params: SamplingParams) -> Continuation:
        words = tuple(d.words)
        seq = _Seq(problem=parent.problem, parent=parent_id, own_tokens=len(words),
                   length=parent.length + len(words), steps_done=d.steps_done,
                   correct=d.correct, ended=d.ended, pending=d.pending,
                   pending_quality=d.pending_quality, quality=tuple(d.quality),
                   seen_by={self._engine_id})
        if self.config.thinking:
            seq.think_open, seq.think_tokens = d.think_open, d.think_tokens
            seq.waits, seq.belief = d.waits, d.belief
        hid = self._new(seq, words)
        ids = tuple(self._token_id(w) for w in words)
        text = _join_words(words)
        k = params.top_logprobs
        tops = tuple(token_top_logprobs(x, max(k, 1), t, self.config.vocab_size)
                     for x, t in zip(d.quality, ids)) if (k or self._signals) else ()
        if self._signals:
            logprobs = tuple(top[0][1] for top in tops)
        else:
            logprobs = tuple(-0.3 - (_hash_int("lp", hid, i) % 1000) / 1000
                             for i in range(len(ids)))
        reason = d.stop_reason or {FinishReason.EOS: "eos", FinishReason.STOP: "stop",
                                   FinishReason.MAX_TOKENS: "max_tokens",
                                   FinishReason.BUDGET: "budget"}.get(d.finish)
        return Continuation(handle=hid, token_ids=ids, text=text, logprobs=logprobs,
                            finish=d.finish, top_logprobs=tuple(t[:k] for t in tops) if k else (),
                            stop_reason=reason, stats=dict(d.stats))

    # -- model pairs, probes and tokens --------------------------------------------------
    def _token_id(self, word: str) -> int:
        tid = _hash_int("tok", word) % self.config.vocab_size
        self._vocab.setdefault(tid, word)
        return tid

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: one per whitespace-separated word."""
        return [self._token_id(w) for w in text.split()]

    @property
    def thinking_delimiters(self) -> tuple[str, str] | None:
        cfg = self.config
        return (cfg.think_start, cfg.think_end) if cfg.thinking else None

    def shares_handles_with(self, other: object) -> bool:
        """True for the other model of this engine's pair (one handle table)."""
        return isinstance(other, SimulatedGenerator) and other._seqs is self._seqs

    def _run_unseen(self, handle: Handle) -> int:
        """Tokens of the handle's sequence this engine has not run; marks them run."""
        unseen = 0
        for _, s in self._seqs.lineage(handle):  # type: ignore[arg-type]
            if self._engine_id not in s.seen_by:
                unseen += s.own_tokens
                s.seen_by.add(self._engine_id)
        return unseen

    def truncate(self, handle: Handle, position: int) -> Handle:
        """The handle's ancestor that ends at ``position`` tokens (a step boundary)."""
        self._live(handle)
        for hid, s in self._seqs.lineage(handle):  # type: ignore[arg-type]
            if s.length == position:
                s.pinned = True
                return hid
        raise ValueError(f"the simulated engine truncates at step boundaries only; "
                         f"position {position!r} is not one for handle {handle!r}.")

    def _judge_probe(self, handle: Handle, seq: _Seq, suffix_len: int, n: int
                     ) -> ExpandOutput:
        """A judge probe (``Purpose.JUDGE``): after ``handle`` + the judge's question, one
        digit 0-9 per sample that reads whether the trajectory so far is right."""
        unseen = self._run_unseen(handle)      # the candidate step is run once and kept
        prefill = unseen + suffix_len
        conts = []
        for i in range(n):
            rng = random.Random(_hash_int(self.config.world_seed, "judge", handle,
                                          self._engine_id, seq.children, i))
            truth = 0.85 if seq.correct else 0.35
            value = min(1.0, max(0.0, rng.gauss(truth, self.config.judge_noise)))
            digit = str(round(9 * value))
            conts.append(Continuation(handle=None, token_ids=(self._token_id(digit),),
                                      text=digit, logprobs=(-0.1,),
                                      finish=FinishReason.MAX_TOKENS))
        seq.children += n
        self.modelled_seconds += prefill / self.config.prefill_tokens_per_second + (
            self.config.decode_step_seconds + n * self.config.decode_seconds_per_branch)
        self.prefill_tokens_run += prefill
        self.decode_tokens_run += n
        return ExpandOutput(continuations=(tuple(conts),), usage=GenerationUsage(
            prefill_tokens=prefill, cached_tokens=seq.length - unseen, generated_tokens=n,
            peak_kv_bytes=self.peak_kv_bytes))

    def _fused_gold_chance(self, gold_answer: str, quoted: tuple[str, ...]) -> float:
        gold = sum(1 for a in quoted if a == gold_answer) * (1 + self.config.fuse_skill)
        rest = sum(1 for a in quoted if a != gold_answer)
        return gold / (gold + rest) if gold + rest else 0.0

    # -- thinking mode ---------------------------------------------------------------------
    def _converged(self, model: ProblemModel, tokens: int) -> float:
        """q(t): the chance a branch's belief is right after ``tokens`` thinking tokens."""
        cfg = self.config
        p_max = 1.0 - cfg.max_step_error * model.difficulty / 2
        tau = cfg.converge_tokens * (0.5 + model.difficulty)
        return p_max * (1.0 - math.exp(-tokens / tau))

    def _draft_thinking(self, seq: _Seq, req: ExpandRequest, rng: random.Random) -> _Draft:
        """Plan one thinking-mode continuation token by token, running the stop rules."""
        cfg = self.config
        greedy = req.params.temperature == 0.0
        d = _Draft(steps_done=seq.steps_done, correct=seq.correct, think_open=seq.think_open,
                   think_tokens=seq.think_tokens, waits=seq.waits, belief=seq.belief)
        if d.belief < 0:
            d.belief = 0.5 if greedy else rng.random()
        rules = [spec.start() for spec in req.params.stop_rules]
        k = max((spec.top_k for spec in req.params.stop_rules), default=0)
        planned = list(seq.pending)
        d.ended = bool(planned) and not seq.think_open   # resuming a cut answer step
        forced: list[str] = []
        stop_at_step = bool(req.params.stop)
        while True:
            if not forced and not planned:
                if d.ended:
                    d.finish, d.stop_reason = FinishReason.EOS, "eos"
                    break
                planned = self._next_thinking_words(seq.problem, d, rng)
            if len(d.words) >= req.params.max_tokens:
                d.pending = tuple(forced + planned)
                d.pending_quality = (0.0,) * len(d.pending)
                d.finish, d.stop_reason = FinishReason.MAX_TOKENS, "max_tokens"
                break
            is_forced = bool(forced)
            word = forced.pop(0) if is_forced else planned.pop(0)
            d.words.append(word)
            d.forced.append(is_forced)
            d.quality.append(0.0)      # thinking mode carries no token signal
            self._think_state(d, word, forced=is_forced)
            tid = self._token_id(word)
            top = token_top_logprobs(0.0, max(k, 1), tid, self.config.vocab_size)
            action = None
            for rule in rules:
                action = rule.on_token(tid, top[0][1], top[:k] if k else None,
                                       forced=is_forced)
                if action is not None:
                    break
            if isinstance(action, Stop):
                d.finish, d.stop_reason = FinishReason.RULE, f"rule:{action.reason}"
                d.ended = True
                break
            if isinstance(action, Replace):
                # NOTE: the sampled token never enters the sequence: undo it in place.
                d.words.pop()
                d.forced.pop()
                d.quality.pop()
                if word == cfg.think_end:
                    d.think_open = True
                    d.waits += 1
                forced.extend(action.text.split())
                planned = []
            elif isinstance(action, Force):
                forced.extend(action.text.split())
                planned = []             # the model re-plans after the forced text
            if word == "\n\n" and stop_at_step and not is_forced and not forced:
                d.finish, d.stop_reason = FinishReason.STOP, "stop:'\\n\\n'"
                break
        for rule in rules:
            d.stats.update(rule.summary())
        return d

    def _think_state(self, d: _Draft, word: str, *, forced: bool) -> None:
        if word == self.config.think_end:
            d.think_open = False
        elif d.think_open and not forced:
            d.think_tokens += 1

    def _next_thinking_words(self, model: ProblemModel, d: _Draft,
                             rng: random.Random) -> list[str]:
        cfg = self.config
        if d.think_open:
            natural = model.num_steps - 1 + d.waits * cfg.wait_steps
            if d.steps_done >= natural:
                return [cfg.think_end]                     # the model tries to stop
            d.steps_done += 1
            mu = math.log(cfg.mean_step_tokens) - cfg.step_tokens_sigma ** 2 / 2
            length = max(6, min(4 * cfg.mean_step_tokens,
                                int(rng.lognormvariate(mu, cfg.step_tokens_sigma))))
            d.correct = d.belief < self._converged(model, d.think_tokens + length)
            tag = step_tag(cfg.world_seed, d.correct, rng)
            filler = [rng.choice(_FILLER) for _ in range(length - 4)]
            return ["Step", f"{d.steps_done}:", *filler, f"[{tag}]", "\n\n"]
        d.ended = True
        d.correct = d.belief < self._converged(model, d.think_tokens)
        answer = model.gold if d.correct else rng.choices(model.wrong,
                                                          weights=model.wrong_weights)[0]
        return ["Therefore", "the", "answer", "is", f"\\boxed{{{answer}}}."]


def token_top_logprobs(x: float, k: int, token_id: int, vocab_size: int
                       ) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, natural-log prob) pairs at a token of latent signal x.

    The sampled token is the most likely one, with p1 = sigmoid(1.5 + x); 90% of the rest
    goes to k - 1 alternatives halving in turn (ids derived from the token's). Higher x ->
    more peaked -> larger DeepConf confidence -mean(top-k log-probs), monotonically.
    """
    p1 = 1.0 / (1.0 + math.exp(-(1.5 + x)))
    rest = max(1.0 - p1, 1e-12) * 0.9
    top = [(token_id, math.log(p1))]
    if k > 1:
        norm = sum(0.5 ** j for j in range(k - 1))
        for j in range(k - 1):
            top.append(((token_id + 1 + j) % vocab_size, math.log(rest * 0.5 ** j / norm)))
    return tuple(top)


def _draw_position(seq: _Seq) -> int:
    """Where a sequence ends, for seeding its draws: its length without the question's
    words, so that rewording a prompt (a strategy's or the user's) changes its token
    count but none of the simulated draws."""
    return seq.length - seq.problem.question_words


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


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def shown_answers(question: str) -> tuple[str, ...]:
    """Answers a composed prompt quotes (``\\boxed{...}`` before any "Critiques:")."""
    quoted = question.split("\nCritiques:")[0]
    found = (m.strip().rstrip(".") for m in _BOXED.findall(quoted))
    return tuple(a for a in found if a)      # an empty \\boxed{} is an instruction


def _check_peer(config: SimulatedBackendConfig, other: SimulatedBackendConfig) -> None:
    for name in ("world_seed", "thinking", "think_start", "think_end", "prompt_tokens",
                 "vocab_size"):
        if getattr(config, name) != getattr(other, name):
            raise ValueError(f"the two simulated models of a pair must share {name}; got "
                             f"{getattr(config, name)!r} and {getattr(other, name)!r}.")


def small_model_config(large: SimulatedBackendConfig, *, error_ratio: float = 1.6,
                       speedup: float = 5.0) -> SimulatedBackendConfig:
    """The draft model of a pair: same world, ``error_ratio`` times the step error (at
    most 1), ``speedup`` times cheaper per prefill token and per decode step."""
    return large.model_copy(update={
        "max_step_error": min(1.0, large.max_step_error * error_ratio),
        "prefill_tokens_per_second": large.prefill_tokens_per_second * speedup,
        "decode_step_seconds": large.decode_step_seconds / speedup,
        "decode_seconds_per_branch": large.decode_seconds_per_branch / speedup})


@BACKENDS.register(SimulatedBackendConfig)
def build_simulated(config: SimulatedBackendConfig, *, peer: object = None,
                    **_: object) -> SimulatedGenerator:
    if peer is not None and not isinstance(peer, SimulatedGenerator):
        raise ValueError(f"a simulated draft model pairs only with a simulated backend "
                         f"(they share handles); the backend is {type(peer).__name__}.")
    return SimulatedGenerator(config, peer=peer)
