"""MCTS over reasoning steps: PUCT or UCT selection, PRM or rollout values (docs/algorithms.md#mcts).

    for each round (``batch`` simulations at once, with virtual loss):
        SELECT   from the root, child = argmax of the tree policy until an unexpanded or
                 terminal node
                 puct: Q(c) + C(parent) P(c) sqrt(N(parent)) / (1 + N(c))
                       C(parent) = log((N(parent) + c_base + 1) / c_base) + c_init
                 uct : Q(c) + c_uct sqrt(ln N(parent) / N(c)); an unvisited child first
                 Q(c) = W(c)/N(c), or the PRM score of c while N(c) = 0
        in-flight paths get a virtual visit (N += virtual_loss, W unchanged), so the
        other selections of the round spread out; it is removed before backup
        EXPAND   all selected leaves at once: k steps each in ONE engine call, children
                 scored in ONE verifier call; priors P = softmax of the children's
                 mean token log-probabilities; at the root, with ``dirichlet_weight`` e > 0,
                 P = (1 - e) P + e eta, eta ~ Dirichlet(dirichlet_alpha) (drawn once)
        EVALUATE value="prm"    : v = the leaf's best child's PRM score; the visit is
                                  backed up to the leaf (the child's Q is that score)
                 value="rollout": node = the leaf's best child by PRM score; its
                                  trajectory is completed greedily (temperature 0, all
                                  rollouts of the round in ONE engine call) and scored
                                  (ONE verifier call); v = the rollout's last-step score,
                                  backed up along root .. node (the spec's path); the
                                  rollout is offered as a candidate, never selected into
        BACKUP   N += 1, W += v along the path (a terminal leaf's v is its own score)
    answer: weighted vote over the terminal trajectories found; when none was found,
            the most-visited path is completed by one sampled rollout (``final_rollout``)

Choices where the spec is silent or unverified (say so when comparing): UCT's constant
defaults to 2 (rStar's, unverified); UCT ignores priors, so root noise is refused with
it; the Dirichlet noise is off by default (OpenR adds it only when sampling training
data) and drawn once per search, when the root is expanded; a rollout is scored by the
configured verifier's last-step score (the ORM role; rStar's answer-consistency check
needs a second model and is not implemented).

Certaindex (docs/algorithms.md "Certaindex"; Fu et al., arXiv:2412.20993): after
``certaindex_at`` simulations, each round checks the terminal answers' certaindex H~
and/or their mean reward and stops once the configured ones clear their thresholds
(``info["certaindex"]``). On by default with the paper's MCTS setting for GSM8K (its
Table 3: H~ >= 0.99 and mean reward >= 0.4, detected after 3 simulations); set both
thresholds to null for plain MCTS.

KV lifecycle: the whole tree may be revisited, so every node stays pinned with value
Q (the engine evicts low-Q nodes first, docs/algorithms.md#cache-policy); terminal nodes and rollouts are offered
and released.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.certaindex import certaindex_check
from ttc.tree import Node, NodeStatus


class MCTSConfig(StrategyConfig):
    name: Literal["mcts"] = "mcts"
    n_simulations: PositiveInt = 32
    k: PositiveInt = 3                  # children per expansion
    batch: PositiveInt = 2              # simulations selected and expanded together
    c_base: float = Field(default=19652.0, gt=0.0)
    c_init: float = Field(default=1.25, ge=0.0)
    virtual_loss: float = Field(default=1.0, ge=0.0)
    final_rollout: bool = True          # no terminal found: finish the most-visited path
    tree_policy: Literal["puct", "uct"] = "puct"
    c_uct: float = Field(default=2.0, ge=0.0)          # UCT exploration constant
    dirichlet_alpha: float = Field(default=0.3, gt=0.0)
    dirichlet_weight: float = Field(default=0.0, ge=0.0, le=1.0)   # 0: no root noise
    value: Literal["prm", "rollout"] = "prm"
    selection: Selection = Selection.WEIGHTED
    certaindex_entropy: float | None = Field(
        default=0.99, gt=0.0, le=1.0, description="stop once the terminal answers' "
        "certaindex H~ >= this (null: off; 0.99 is the Dynasor paper's MCTS/GSM8K value)")
    certaindex_reward: float | None = Field(
        default=0.4, ge=0.0, le=1.0, description="and once their mean reward >= this "
        "(null: off; 0.4 is the paper's MCTS value)")
    certaindex_at: PositiveInt = Field(default=3, description="simulations before the "
                                       "certaindex is checked (then after every round)")

    @model_validator(mode="after")
    def _noise_needs_priors(self) -> "MCTSConfig":
        if self.dirichlet_weight > 0 and self.tree_policy == "uct":
            raise ValueError("dirichlet_weight > 0 perturbs priors, which tree_policy 'uct' "
                             "does not use; use tree_policy 'puct' or dirichlet_weight 0.")
        return self


def puct_score(*, q: float, prior: float, parent_visits: float, child_visits: float,
               c_base: float, c_init: float) -> float:
    """Q + C(parent) * P * sqrt(N(parent)) / (1 + N(child))."""
    c = math.log((parent_visits + c_base + 1.0) / c_base) + c_init
    return q + c * prior * math.sqrt(parent_visits) / (1.0 + child_visits)


def uct_score(*, q: float, parent_visits: float, child_visits: float, c_uct: float) -> float:
    """Q + c_uct * sqrt(ln N(parent) / N(child)); an unvisited child scores +inf."""
    if child_visits <= 0:
        return math.inf
    return q + c_uct * math.sqrt(math.log(max(parent_visits, 1.0)) / child_visits)


def dirichlet_noise(alpha: float, size: int, rng: random.Random) -> list[float]:
    """eta ~ Dirichlet(alpha, ..., alpha) of ``size`` components (normalised gammas)."""
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(size)]
    total = sum(draws)
    if total <= 0.0:          # every gamma underflowed (tiny alpha): a uniform draw
        return [1.0 / size] * size
    return [d / total for d in draws]


def priors_from_logprobs(mean_logprobs: list[float]) -> list[float]:
    """Softmax of mean token log-probabilities (normalised step likelihoods)."""
    top = max(mean_logprobs)
    e = [math.exp(x - top) for x in mean_logprobs]
    s = sum(e)
    return [x / s for x in e]


@register(MCTSConfig)
class MCTS(SearchStrategy):
    config: MCTSConfig

    def _q(self, node: Node, virtual: dict[int, float]) -> tuple[float, float]:
        n = node.visits + virtual.get(node.id, 0.0)
        if n == 0:
            return (node.score if node.score is not None else 0.0), 0.0
        return node.value / n, n

    def select_child(self, parent: Node, ctx: SearchContext,
                     virtual: dict[int, float]) -> Node:
        cfg = self.config
        parent_n = parent.visits + virtual.get(parent.id, 0.0)
        best, best_s = None, (-math.inf, -math.inf)
        for cid in parent.children:
            child = ctx.tree[cid]
            if not _selectable(child):
                continue
            q, n = self._q(child, virtual)
            if cfg.tree_policy == "uct":
                # ties among unvisited children (all +inf) go to the higher PRM score
                s = (uct_score(q=q, parent_visits=parent_n, child_visits=n,
                               c_uct=cfg.c_uct), q)
            else:
                s = (puct_score(q=q,
                                prior=child.extra.get("prior", 1.0 / len(parent.children)),
                                parent_visits=parent_n, child_visits=n,
                                c_base=cfg.c_base, c_init=cfg.c_init), 0.0)
            if s > best_s:
                best, best_s = child, s
        assert best is not None   # callers only descend into nodes with live children
        return best

    def _has_live_children(self, node: Node, ctx: SearchContext) -> bool:
        return any(_selectable(ctx.tree[c]) for c in node.children)

    def _settled(self, ctx: SearchContext, sims: int) -> bool:
        """Certaindex early stop (docs/algorithms.md#dynasor-and-certaindex): terminal answers' H~ and/or mean reward."""
        cfg = self.config
        if (cfg.certaindex_entropy is None and cfg.certaindex_reward is None) \
                or sims < cfg.certaindex_at or not ctx.candidates:
            return False
        record = certaindex_check([c.answer for c in ctx.candidates],
                                  [c.score or 0.0 for c in ctx.candidates],
                                  entropy=cfg.certaindex_entropy, reward=cfg.certaindex_reward,
                                  reward_how="mean")
        ctx.info["certaindex"] = {**record, "simulations": sims}
        return bool(record["stop"])

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        sims = 0
        offered: set[int] = set()
        noise_rng = random.Random(ctx.seed("mcts-dirichlet"))
        while sims < cfg.n_simulations:
            virtual: dict[int, float] = {}
            paths: list[list[Node]] = []
            for _ in range(min(cfg.batch, cfg.n_simulations - sims)):
                node, path = ctx.root, [ctx.root]
                while node.status is not NodeStatus.TERMINAL and \
                        self._has_live_children(node, ctx):
                    node = self.select_child(node, ctx, virtual)
                    path.append(node)
                if any(p[-1] is node for p in paths) and node.status is not NodeStatus.TERMINAL:
                    break              # the same leaf twice: expand it once this round
                for p in path:
                    virtual[p.id] = virtual.get(p.id, 0.0) + cfg.virtual_loss
                paths.append(path)
            sims += len(paths)
            leaves = [p[-1] for p in paths if p[-1].status is not NodeStatus.TERMINAL]
            if leaves:
                params = [ctx.step_params(ctx.seed("mcts", n.id)) for n in leaves]
                kids = ctx.expand(leaves, n=cfg.k, params=params)
                flat = [c for cs in kids for c in cs]
                ctx.score([c for c in flat if c.text.strip()])
                for leaf, cs in zip(leaves, kids):
                    live = [c for c in cs if c.text.strip() and not c.cut_by_budget]
                    ctx.release([c for c in cs if c not in live])
                    if live:
                        priors = priors_from_logprobs(
                            [c.logprob / max(1, c.num_tokens) for c in live])
                        if leaf is ctx.root and cfg.dirichlet_weight > 0:
                            priors = self._noisy(priors, live, noise_rng)
                        for c, p in zip(live, priors):
                            c.extra["prior"] = p
                            if c.status is NodeStatus.TERMINAL and c.id not in offered:
                                offered.add(c.id)
                                ctx.offer(c)
                                ctx.release([c], prune=False)
                    leaf.extra["leaf_value"] = max((c.score or 0.0 for c in live),
                                                   default=0.0)
                    if live and cfg.value == "rollout":
                        leaf.extra["best_child"] = max(
                            live, key=lambda c: c.score if c.score is not None else -1.0).id
            if cfg.value == "rollout":
                paths = self._rollouts(ctx, paths, offered)
            pinned = set(ctx.pinned_nodes)
            for path in paths:
                leaf = path[-1]
                if "rollout_value" in leaf.extra:
                    v = leaf.extra.pop("rollout_value")
                elif leaf.status is NodeStatus.TERMINAL or "leaf_value" not in leaf.extra:
                    v = leaf.score if leaf.score is not None else 0.0   # rollout cut: PRM
                else:
                    v = leaf.extra["leaf_value"]
                for node in path:
                    node.visits += 1
                    node.value += v
                    if node.id in pinned and node.status is not NodeStatus.TERMINAL:
                        ctx.generator.pin([node.handle], value=node.value / node.visits)
            best = max((c.score for c in ctx.candidates if c.score is not None), default=None)
            ctx.emit(step=sims, live=len(ctx.pinned_nodes), best_score=best,
                     note=f"{len(ctx.candidates)} terminal")
            if self._settled(ctx, sims):
                break
        if cfg.final_rollout and not ctx.candidates:
            self._rollout(ctx)
        ctx.info.update(simulations=sims, root_visits=ctx.root.visits,
                        child_visits=[ctx.tree[c].visits for c in ctx.root.children
                                      if _selectable(ctx.tree[c])])

    def _noisy(self, priors: list[float], children: list[Node],
               rng: random.Random) -> list[float]:
        """(1 - e) P + e eta at the root; the clean prior and eta stay on the children."""
        eps = self.config.dirichlet_weight
        eta = dirichlet_noise(self.config.dirichlet_alpha, len(priors), rng)
        for c, p, e in zip(children, priors, eta):
            c.extra["prior_clean"] = p
            c.extra["noise"] = e
        return [(1.0 - eps) * p + eps * e for p, e in zip(priors, eta)]

    def _rollouts(self, ctx: SearchContext, paths: list[list[Node]],
                  offered: set[int]) -> list[list[Node]]:
        """EVALUATE by rollout: extend each expanded leaf's path to its best child and
        complete that child greedily; the rollout's score becomes the path's value."""
        out: list[list[Node]] = []
        todo: list[tuple[list[Node], Node]] = []
        for path in paths:
            leaf = path[-1]
            if leaf.status is NodeStatus.TERMINAL or "best_child" not in leaf.extra:
                out.append(path)
                continue
            child = ctx.tree[leaf.extra.pop("best_child")]
            path = path + [child]
            out.append(path)
            if child.status is not NodeStatus.TERMINAL:
                todo.append((path, child))
        if not todo:
            return out
        starts = [c for _, c in todo]
        params = []
        for c in starts:
            used = sum(n.num_tokens for n in ctx.tree.path(c))
            params.append(ctx.solution_params(
                ctx.seed("mcts-rollout", c.id), temperature=0.0,
                max_tokens=max(1, ctx.generation.max_tokens - used)))
        groups = ctx.expand(starts, n=1, params=params)
        rollouts = [g[0] for g in groups]
        for r in rollouts:
            r.extra["rollout"] = True
        ctx.score([r for r in rollouts if r.text.strip()])
        for (path, child), r in zip(todo, rollouts):
            if r.score is not None and not r.cut_by_budget:
                path[-1].extra["rollout_value"] = r.score
                if r.id not in offered:
                    offered.add(r.id)
                    ctx.offer(r)
            # a cut or empty rollout leaves the child's PRM score as the value
        ctx.release(rollouts, prune=False)
        return out

    def _rollout(self, ctx: SearchContext) -> None:
        node = ctx.root
        while True:
            kids = [ctx.tree[c] for c in node.children
                    if _selectable(ctx.tree[c]) and ctx.tree[c].visits > 0]
            if not kids:
                break
            node = max(kids, key=lambda c: (c.visits, c.value))
        if node.status is NodeStatus.TERMINAL or node.handle is None:
            return
        if node.id not in set(ctx.pinned_nodes):
            return
        (done,) = ctx.expand([node], n=1, params=ctx.solution_params(ctx.seed("rollout")))
        ctx.score([d for d in done if d.text.strip()])
        for d in done:
            if d.text.strip():
                ctx.offer(d)


def _selectable(node: Node) -> bool:
    """A child the tree policy may descend into: not pruned, not a rollout."""
    return node.status is not NodeStatus.PRUNED and not node.extra.get("rollout")
