"""What every strategy shares: the run/search split, the search context, selection.

Contract: a strategy subclasses :class:`SearchStrategy` and writes only ``search(ctx)``,
the loop of its paper's pseudo-code. :meth:`SearchStrategy.run` opens a ledger for the
problem, wraps the generator and verifier in metered views (so every token and call is
charged once, and budgets are hard limits), stops the search when a budget runs out,
releases every handle still pinned, and turns the candidates into a
:class:`~ttc.types.Result`.

:class:`SearchContext` holds the helpers the pseudo-code needs: ``expand`` (one engine
call for many nodes, children added to the tree, terminal ones recognised), ``score``
(one verifier call for many nodes, step scores stored on the nodes), ``release``
(pruned nodes' KV freed at once), ``offer`` (a finished trajectory becomes a candidate),
``open_prompt`` (another prompt to the same model, e.g. a planner or a join, as a pinned
node under the root) and reproducible ``seed``\\ s.

Events: with a progress callback, ``emit`` sends the strategy's step reports and the
context sends one event per tree change (node added, scored, pruned; the chosen leaf at
the end), each with the ledger's generated tokens so far: enough for a viewer to redraw
the tree live (:mod:`ttc.live`) without knowing the strategy.

KV lifecycle::

    expand(parents) ─► children pinned by the engine (alive)
    score(children) ─► value attached with pin(value=score): low values evicted first
    release(pruned) ─► KV not shared with a live node freed at once
    end of run      ─► every node still pinned is released

Must NOT know: engine internals (pages, block tables, kernels), Hydra, file formats.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, ClassVar, Iterable, Sequence

from pydantic import Field

from ttc.aggregate import Selection, StepAggregation, aggregate_steps, select
from ttc.answers import extract_answer
from ttc.config import GenerationConfig
from ttc.ledger import Budget, BudgetExhausted, ComputeLedger
from ttc.metered import MeteredGenerator, MeteredVerifier
from ttc.protocols import Generator, ProgressCallback, Verifier
from ttc.registry import STRATEGIES, ConfigError
from ttc.tree import Node, NodeStatus, SearchTree
from ttc.types import (Candidate, Continuation, EventKind, ExpandRequest, FinishReason,
                       Frozen, NodeUpdate, Problem, ProgressEvent, Purpose, Result,
                       SamplingParams)

__all__ = ["STRATEGIES", "SearchContext", "SearchStrategy", "StrategyConfig",
           "split_steps", "stable_seed"]


class StrategyConfig(Frozen):
    """Fields every strategy has; each strategy adds its own (and only its own)."""

    name: str
    keep_tree: bool = Field(default=True, description="return the search tree in the Result")


def stable_seed(*parts: Any) -> int:
    """A seed from any values, stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def split_steps(text: str, delimiter: str) -> list[str]:
    """Split a whole solution into steps, each keeping its delimiter; empty steps dropped."""
    steps: list[str] = []
    start = 0
    while True:
        idx = text.find(delimiter, start)
        if idx < 0:
            tail = text[start:]
            if tail.strip():
                steps.append(tail)
            return steps
        piece = text[start: idx + len(delimiter)]
        if piece.strip():
            steps.append(piece)
        elif steps:
            steps[-1] += piece   # a run of delimiters stays with the step before it
        start = idx + len(delimiter)


class SearchContext:
    """One problem's search state and the helpers strategies compose."""

    def __init__(self, problem: Problem, *, generator: MeteredGenerator,
                 verifier: MeteredVerifier, ledger: ComputeLedger,
                 generation: GenerationConfig, progress: ProgressCallback | None = None,
                 seed_salt: str = "", draft: MeteredGenerator | None = None) -> None:
        self.problem = problem
        self.generator = generator
        self.draft = draft            # the small model of a pair (SpecReason), if any
        self.verifier = verifier
        self.ledger = ledger
        self.generation = generation
        self.tree = SearchTree(prompt=problem.question)
        self.candidates: list[Candidate] = []
        self.info: dict[str, Any] = {}
        self._progress = progress
        self._last_step: tuple[int, int, float | None] = (0, 0, None)  # step, live, best
        self._seed_salt = seed_salt
        self._pinned: set[int] = set()
        self.thinking_rule = self._thinking_rule()
        self.tree.root.handle = generator.root(problem)
        self._pinned.add(0)

    @property
    def root(self) -> Node:
        return self.tree.root

    # -- seeds and events --------------------------------------------------------------
    def seed(self, *parts: Any) -> int:
        """seed = hash(base_seed, problem, *parts): reproducible, extendable."""
        return stable_seed(self.generation.seed, self.problem.id, self._seed_salt, *parts)

    def emit(self, step: int, live: int, best_score: float | None = None, note: str = "",
             **extra: Any) -> None:
        if self._progress is not None:
            self._last_step = (step, live, best_score)
            self._progress(ProgressEvent(step=step, live=live, best_score=best_score,
                                         note=note, extra=extra, **self._budget_fields()))

    def emit_tree(self, kind: EventKind, node: Node | None, *,
                  budget_exhausted: bool = False) -> None:
        """Report a change of the tree (``node`` None: a CHOSEN event with no answer)."""
        if self._progress is None:
            return
        step, live, best = self._last_step
        update = None if node is None else NodeUpdate(
            id=node.id, parent=node.parent, depth=node.depth, text=node.text,
            tokens=node.num_tokens, status=node.status.value, score=node.score,
            answer=node.answer, cut_by_budget=node.cut_by_budget)
        self._progress(ProgressEvent(step=step, live=live, best_score=best, kind=kind,
                                     node=update, budget_exhausted=budget_exhausted,
                                     **self._budget_fields()))

    def _budget_fields(self) -> dict[str, Any]:
        return {"generated_tokens": self.ledger.generated_tokens,
                "budget_tokens": self.ledger.budget.max_generated_tokens}

    # -- expansion ---------------------------------------------------------------------
    def step_params(self, seed: int, **kw: Any) -> SamplingParams:
        return self.generation.step_params(seed=seed, **kw)

    def solution_params(self, seed: int, **kw: Any) -> SamplingParams:
        return self.generation.solution_params(seed=seed, **kw)

    def _thinking_rule(self):
        gen = self.generation
        if gen.thinking_cap is None and not gen.thinking_extend:
            return None
        from ttc.strategies.thinking import thinking_rule

        return thinking_rule(self.generator, cap=gen.thinking_cap, extend=gen.thinking_extend,
                             extend_text=gen.thinking_extend_text,
                             answer_text=gen.thinking_answer_text,
                             setting="generation.thinking_cap/thinking_extend")

    def thinking_of(self, node: Node):
        """The node's path's thinking so far (:class:`~ttc.strategies.thinking.ThinkingState`)."""
        from ttc.strategies.thinking import ThinkingState

        return ThinkingState(**node.extra.get("thinking", {}))

    def _with_thinking(self, parent: Node, params: SamplingParams) -> SamplingParams:
        from ttc.strategies.thinking import continued

        rule = continued(self.thinking_rule, self.thinking_of(parent))
        if rule is None:
            return params
        return params.model_copy(update={"stop_rules": (*params.stop_rules, rule)})

    def expand(self, parents: Sequence[Node], *, n: int | Sequence[int] = 1,
               params: SamplingParams | Sequence[SamplingParams],
               generator: MeteredGenerator | None = None,
               purpose: Purpose = Purpose.GENERATE) -> list[list[Node]]:
        """Expand every parent ``n`` times in one engine call; return children per parent.

        ``generator`` (default: the context's) may be the draft model of a pair, which
        continues the same handles. ``purpose`` tells the engine what kind of call this
        is (:class:`~ttc.types.Purpose`; a fuser's merge is ``FUSE``).

        Children are added to the tree and pinned. A child is terminal when the engine
        ended it (EOS or a model limit), when it states a final answer (``\\boxed{``),
        or when the trajectory reaches ``max_steps`` or ``max_tokens``.
        """
        counts = [n] * len(parents) if isinstance(n, int) else list(n)
        plist = [params] * len(parents) if isinstance(params, SamplingParams) else list(params)
        if not (len(counts) == len(plist) == len(parents)):
            raise ValueError(f"expand got {len(parents)} parents, {len(counts)} counts and "
                             f"{len(plist)} sampling params; they must match.")
        if self.thinking_rule is not None:
            plist = [self._with_thinking(p, sp) for p, sp in zip(parents, plist)]
        requests = [ExpandRequest(prefix=p.handle, n=k, params=sp, purpose=purpose)
                    for p, k, sp in zip(parents, counts, plist) if k > 0]
        if not requests:
            return [[] for _ in parents]
        out = (generator or self.generator).expand(requests)
        results: list[list[Node]] = []
        it = iter(out.continuations)
        for parent, k in zip(parents, counts):
            conts = next(it) if k > 0 else ()
            results.append([self._add_child(parent, c) for c in conts])
        return results

    def _add_child(self, parent: Node, cont: Continuation) -> Node:
        child = self.tree.add(parent, text=cont.text, token_ids=cont.token_ids,
                              handle=cont.handle, logprob=float(sum(cont.logprobs)),
                              finish=cont.finish.value)
        self._pinned.add(child.id)
        if "thinking_tokens" in cont.stats:
            # NOTE: kept as a plain dict: the tree is written as JSON.
            child.extra["thinking"] = self.thinking_of(parent).after(cont.stats).as_dict()
        # NOTE: top log-probs are large; a strategy that asks for them reduces them to
        # what it needs and pops them, so they never reach the result's tree.
        if cont.top_logprobs:
            child.extra["top_logprobs"] = cont.top_logprobs
        if cont.finish is FinishReason.RULE:   # which stop rule ended it, and its summary
            child.extra["stop_reason"] = cont.stop_reason
        if cont.stats:
            child.extra["stats"] = dict(cont.stats)
        path_tokens = sum(n.num_tokens for n in self.tree.path(child))
        answer = extract_answer(cont.text) if "boxed" in cont.text else None
        whole = "".join(self.tree.steps(child))
        if cont.ended or answer is not None or child.depth >= self.generation.max_steps \
                or path_tokens >= self.generation.max_tokens:
            child.status = NodeStatus.TERMINAL
            child.answer = answer if answer is not None else extract_answer(
                whole, fallback_last_number=(cont.finish is FinishReason.EOS
                                             and self.generation.last_number_answer))
        elif cont.finish is FinishReason.BUDGET:
            child.cut_by_budget = True
        self.emit_tree(EventKind.NODE_ADDED, child)
        return child

    # -- scoring -----------------------------------------------------------------------
    def steps_of(self, node: Node) -> list[str]:
        """The node's trajectory as verifier steps (a whole solution is split).

        The path's texts are joined before splitting, so a step that one expansion cut
        (``max_tokens``) and the next one finished is one step, not two.
        """
        text = "".join(n.text for n in self.tree.path(node))
        return split_steps(text, self.generation.step_delimiter)

    def score(self, nodes: Sequence[Node]) -> list[list[float]]:
        """Score the nodes' trajectories in one verifier call; store the last step score
        on each node and attach it as the node's KV value."""
        nodes = list(nodes)
        trajectories = [self.steps_of(n) for n in nodes]
        # NOTE: a node with no text yet (cut by the budget at once) has nothing to score
        # and costs no verifier call; it keeps score None.
        todo = [i for i, t in enumerate(trajectories) if t]
        per_node: list[list[float]] = [[] for _ in nodes]
        if not todo:
            return per_node
        out = self.verifier.score(self.problem, [trajectories[i] for i in todo])
        for i, scores in zip(todo, out.scores):
            node = nodes[i]
            node.score = scores[-1] if scores else None
            node.extra["step_scores"] = list(scores)
            per_node[i] = list(scores)
            if node.id in self._pinned:
                self.generator.pin([node.handle], value=node.score)
            self.emit_tree(EventKind.NODE_SCORED, node)
        return per_node

    def value(self, node: Node, how: StepAggregation | str = "last") -> float:
        """Aggregated score of a scored node's trajectory."""
        scores = node.extra.get("step_scores")
        if not scores:
            return node.score if node.score is not None else 0.0
        return aggregate_steps(scores, how)

    # -- other prompts -----------------------------------------------------------------
    def open_prompt(self, question: str, *, label: str, context: str = "") -> Node:
        """Another prompt to the same model (a planner, a thread, a join), as a node.

        The engine formats and tokenizes ``question`` as it does the problem's; the
        returned node hangs under the root, holds the new prompt's pinned handle (so
        ``release_all`` frees it) and can be expanded like any node. ``context`` is the
        node's text: what of the trajectory this prompt carries (threads: the parent
        context), so that scoring its children scores context + continuation; it has no
        token ids of its own (the prompt is prefilled, and charged, when first expanded).
        """
        # NOTE: the conversation before the question (a client's system prompt, earlier
        # turns) stays with every prompt of the search.
        problem = Problem(id=self.problem.id, question=question, answer=self.problem.answer,
                          metadata=self.problem.metadata, context=self.problem.context)
        handle = self.generator.root(problem)
        node = self.tree.add(self.root, text=context, handle=handle)
        node.extra["prompt"] = question
        node.extra["label"] = label
        self._pinned.add(node.id)
        self.emit_tree(EventKind.NODE_ADDED, node)
        return node

    # -- lifecycle ---------------------------------------------------------------------
    def release(self, nodes: Iterable[Node], *, prune: bool = True) -> None:
        """Release the nodes' KV now (pruned, or finished and no longer needed)."""
        handles = []
        for node in nodes:
            if node.id in self._pinned:
                self._pinned.discard(node.id)
                handles.append(node.handle)
            if prune and node.status is not NodeStatus.TERMINAL \
                    and node.status is not NodeStatus.PRUNED:
                node.status = NodeStatus.PRUNED
                self.emit_tree(EventKind.NODE_PRUNED, node)
        self.generator.release(handles)

    def release_all(self) -> None:
        handles = [self.tree[i].handle for i in sorted(self._pinned, reverse=True)]
        self._pinned.clear()
        self.generator.release(handles)

    @property
    def pinned_nodes(self) -> list[int]:
        return sorted(self._pinned)

    # -- candidates --------------------------------------------------------------------
    def offer(self, node: Node, *, score: float | None = None) -> Candidate:
        """Record a trajectory as a candidate answer."""
        path = self.tree.path(node)
        tokens = sum(n.num_tokens for n in path)
        logprob = sum(n.logprob for n in path)
        steps = tuple(n.text for n in path if n.text)
        answer = node.answer if node.answer is not None else extract_answer("".join(steps))
        cand = Candidate(steps=steps, answer=answer,
                         score=score if score is not None else node.score,
                         step_scores=tuple(node.extra.get("step_scores", ())),
                         num_tokens=tokens,
                         mean_logprob=(logprob / tokens) if tokens else None,
                         node_id=node.id)
        self.candidates.append(cand)
        return cand


class SearchStrategy:
    """Base class: ``run`` does the bookkeeping, subclasses write ``search``."""

    config_class: ClassVar[type[StrategyConfig]]
    selection: ClassVar[Selection] = Selection.WEIGHTED
    uses_draft: ClassVar[bool] = False      # True: run() needs a draft model (a pair)

    def __init__(self, config: StrategyConfig, *,
                 generation: GenerationConfig | None = None) -> None:
        self.config = config
        self.generation = generation or GenerationConfig()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def needs_draft(self) -> bool:
        """Whether ``run`` needs the draft model of a pair (``draft=``)."""
        return self.uses_draft

    def run(self, problem: Problem, *, generator: Generator, verifier: Verifier,
            budget: Budget | None = None, progress: ProgressCallback | None = None,
            ledger: ComputeLedger | None = None, draft: Generator | None = None,
            line: str | None = None) -> Result:
        """Search ``problem``; ``ledger`` (default: a new one with ``budget``) is charged,
        to the line ``line`` when given (a layer of a composed pipeline)."""
        if self.needs_draft and draft is None:
            raise ConfigError(f"strategy {self.name} needs a draft model next to the backend "
                              f"(for example draft_backend=simulated_small).")
        if draft is not None and not self.needs_draft:
            raise ConfigError(f"strategy {self.name} uses one model; a draft_backend was "
                              f"given (strategies with a draft model: spec_reason).")
        ledger = ledger or ComputeLedger(budget)
        target_line = line or ("target" if draft is not None else None)
        ctx = SearchContext(problem,
                            generator=MeteredGenerator(generator, ledger, line=target_line),
                            verifier=MeteredVerifier(verifier, ledger, line=line),
                            ledger=ledger, generation=self.generation, progress=progress,
                            draft=(MeteredGenerator(draft, ledger, line=line or "draft")
                                   if draft is not None else None))
        try:
            self.search(ctx)
        except BudgetExhausted:
            pass                    # the ledger that raised it has marked itself exhausted
        finally:
            ledger.record_kv_bytes(ctx.generator.kv_bytes())
            ctx.release_all()
        chosen = self.choose(ctx)
        ctx.tree.chosen = chosen.node_id if chosen is not None else None
        ctx.tree.budget_exhausted = ledger.budget_exhausted
        ctx.emit_tree(EventKind.CHOSEN,
                      ctx.tree[chosen.node_id] if chosen and chosen.node_id is not None
                      and chosen.node_id in ctx.tree.nodes else None,
                      budget_exhausted=ledger.budget_exhausted)
        ledger.finish()
        return Result(
            problem_id=problem.id, strategy=self.name,
            answer=chosen.answer if chosen else None,
            trajectory=chosen.steps if chosen else (),
            candidates=tuple(ctx.candidates),
            tree=ctx.tree.to_json() if self.config.keep_tree else None,
            ledger=ledger.snapshot(), info=ctx.info)

    def search(self, ctx: SearchContext) -> None:
        raise NotImplementedError

    def choose(self, ctx: SearchContext) -> Candidate | None:
        """Pick the answer; with no finished candidate, offer the best partial one."""
        if not ctx.candidates:
            partial = [n for n in ctx.tree
                       if n.parent is not None and "prompt" not in n.extra]
            if not partial:
                return None
            best = max(partial, key=lambda n: (n.score if n.score is not None else -1.0,
                                               n.depth))
            ctx.offer(best)
        rule = getattr(self.config, "selection", self.selection)
        return select(ctx.candidates, rule)


def register(config_cls: type[StrategyConfig]) -> Callable[[type], type]:
    """Register a strategy class under its config's ``name``."""
    def decorator(cls: type) -> type:
        cls.config_class = config_cls
        STRATEGIES.register(config_cls)(cls)
        return cls
    return decorator
