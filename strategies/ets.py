"""ETS: efficient tree search, REBASE with an ILP that keeps few distinct nodes (docs/algorithms.md#ets).

At each depth, before REBASE's allocation, an integer linear program chooses which
frontier leaves to keep::

    maximise   sum_i O_i x_i  -  lam_b/(M+N) (sum_j y_j + sum_i x_i)  +  lam_s/K sum_k c_k
    s.t.       y_j >= x_i             leaf i below branch node j (a kept leaf keeps its path)
               y_j <= sum_{i in L(j)} x_i   (no orphan branch nodes)
               c_k <= sum_{i in C_k} x_i    (a cluster is covered only by a kept member)
               sum_i x_i >= 1
    O = balanced_allocation(r, W, T) / sum   (REBASE weights), x, y, c binary

solved with ``scipy.optimize.milp`` (time-capped; on failure plain REBASE is used).
Unkept leaves get reward -inf and REBASE's allocation runs on the kept ones.

Clusters (the coverage term) come from embeddings of each leaf's last step:
``generator.embed(handles)`` when the generator supports it (the policy model's own
representation of the step; the simulated backend models it), else a hashed
bag-of-words of the step text (:func:`text_embedding`), so ETS runs with any backend.
Agglomerative clustering, average linkage, cosine distance cut at
``cluster_distance``. With one cluster or ``lambda_s = 0`` the term is dropped.
``info["ilp"]`` records, per depth, the program's size, its solution and a
constraint check.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from pydantic import Field, PositiveInt

from ttc.aggregate import Selection, StepAggregation
from ttc.strategies.base import SearchContext, StrategyConfig, register
from ttc.strategies.rebase import RewardBalancedSearch, balanced_allocation
from ttc.tree import Node

_WORD = re.compile(r"\w+")


class ETSConfig(StrategyConfig):
    name: Literal["ets"] = "ets"
    width: PositiveInt = 16
    softmax_temperature: float = Field(default=0.2, gt=0.0)
    max_depth: PositiveInt = 25
    lambda_b: float = Field(default=1.0, ge=0.0)     # cost of distinct nodes kept
    lambda_s: float = Field(default=1.5, ge=0.0)     # reward of semantic coverage
    cluster_distance: float = Field(default=0.05, ge=0.0, le=2.0)
    embedding_dim: PositiveInt = 256                 # text fallback's hashed dimensions
    solver_time_limit: float = Field(default=1.0, gt=0.0)
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST


def text_embedding(text: str, *, dim: int = 256) -> list[float]:
    """A hashed bag of words, L2-normalised: identical wordings embed identically."""
    vec = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 63) == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm > 0 else vec


def cluster_labels(embeddings: np.ndarray, *, distance: float) -> list[int]:
    """Agglomerative clusters (average linkage, cosine distance cut at ``distance``).

    ``embeddings``: ``[num_leaves, dim]``. Returns a label in ``0..K-1`` per leaf.
    """
    n = embeddings.shape[0]
    if n == 1:
        return [0]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.where(norms > 0, embeddings / np.maximum(norms, 1e-12), 0.0)
    dists = np.clip(pdist(unit, metric="cosine"), 0.0, 2.0)
    dists = np.nan_to_num(dists, nan=1.0)
    labels = fcluster(linkage(dists, method="average"), t=distance, criterion="distance")
    remap: dict[int, int] = {}
    return [remap.setdefault(int(lab), len(remap)) for lab in labels]


@dataclass(frozen=True, slots=True)
class KeepProgram:
    """One depth's ILP: leaves, their ancestor ('branch') nodes and clusters.

    ``below[j]`` lists the leaf indices under branch node j; ``clusters[k]`` the leaf
    indices in cluster k; ``weights`` are the O_i.
    """

    weights: tuple[float, ...]
    below: tuple[tuple[int, ...], ...]
    clusters: tuple[tuple[int, ...], ...]
    lambda_b: float
    lambda_s: float


def build_program(leaves: Sequence[Node], parent_of: dict[int, int | None],
                  weights: Sequence[float], labels: Sequence[int], *, lambda_b: float,
                  lambda_s: float) -> tuple[KeepProgram, list[int]]:
    """The program for ``leaves`` (branch nodes: every ancestor, root included)."""
    below: dict[int, list[int]] = {}
    for i, leaf in enumerate(leaves):
        cur = parent_of.get(leaf.id)
        while cur is not None:
            below.setdefault(cur, []).append(i)
            cur = parent_of.get(cur)
    branch_ids = sorted(below)
    k = max(labels) + 1 if labels else 0
    clusters = tuple(tuple(i for i, lab in enumerate(labels) if lab == c) for c in range(k))
    use_coverage = lambda_s > 0 and k > 1
    return KeepProgram(weights=tuple(weights),
                       below=tuple(tuple(below[j]) for j in branch_ids),
                       clusters=clusters if use_coverage else (),
                       lambda_b=lambda_b, lambda_s=lambda_s if use_coverage else 0.0), branch_ids


def solve_program(prog: KeepProgram, *, time_limit: float) -> tuple[list[int], list[int], list[int]] | None:
    """Solve with ``scipy.optimize.milp``; return (x, y, c) as 0/1 lists, or None."""
    from scipy.optimize import LinearConstraint, milp
    from scipy.sparse import lil_matrix

    n, m, k = len(prog.weights), len(prog.below), len(prog.clusters)
    node_cost = prog.lambda_b / (m + n)
    # z = [x (n); y (m); c (k)]; milp minimises, so the objective is negated.
    obj = np.concatenate([-(np.asarray(prog.weights) - node_cost),
                          np.full(m, node_cost),
                          np.full(k, -prog.lambda_s / k if k else 0.0)])
    rows = sum(len(b) for b in prog.below) + m + k + 1
    a = lil_matrix((rows, n + m + k))
    ub = np.zeros(rows)
    lb = np.full(rows, -np.inf)
    r = 0
    for j, leaves in enumerate(prog.below):
        for i in leaves:                      # x_i - y_j <= 0
            a[r, i] = 1.0
            a[r, n + j] = -1.0
            r += 1
    for j, leaves in enumerate(prog.below):   # y_j - sum x <= 0
        a[r, n + j] = 1.0
        for i in leaves:
            a[r, i] = -1.0
        r += 1
    for c, members in enumerate(prog.clusters):   # c_k - sum x <= 0
        a[r, n + m + c] = 1.0
        for i in members:
            a[r, i] = -1.0
        r += 1
    a[r, :n] = -1.0                            # -sum x <= -1
    ub[r] = -1.0
    res = milp(obj, constraints=LinearConstraint(a.tocsr(), lb, ub),
               integrality=np.ones(n + m + k), bounds=(0, 1),
               options={"time_limit": time_limit})
    if res.x is None or not res.success:
        return None
    z = [int(round(v)) for v in res.x]
    return z[:n], z[n:n + m], z[n + m:]


def check_solution(prog: KeepProgram, x: Sequence[int], y: Sequence[int],
                   c: Sequence[int]) -> bool:
    """True when (x, y, c) satisfies every constraint of ``prog``."""
    for j, leaves in enumerate(prog.below):
        if any(x[i] > y[j] for i in leaves) or y[j] > sum(x[i] for i in leaves):
            return False
    for k, members in enumerate(prog.clusters):
        if c[k] > sum(x[i] for i in members):
            return False
    return sum(x) >= 1


@register(ETSConfig)
class ETS(RewardBalancedSearch):
    config: ETSConfig

    def embed(self, ctx: SearchContext, leaves: Sequence[Node]) -> np.ndarray:
        if getattr(ctx.generator, "supports_embeddings", False):
            vecs = ctx.generator.embed([n.handle for n in leaves])
            ctx.info["embedding"] = "generator"
        else:
            vecs = [text_embedding(n.text, dim=self.config.embedding_dim) for n in leaves]
            ctx.info["embedding"] = "text"
        return np.asarray(vecs, dtype=float)

    def choose_kept(self, ctx: SearchContext, frontier: list[Node],
                    rewards: list[float], remaining: int) -> list[float]:
        cfg = self.config
        if len(frontier) <= 1:
            return rewards
        alloc = balanced_allocation(rewards, remaining, cfg.softmax_temperature)
        total = sum(alloc)
        weights = [a / total for a in alloc]
        labels = cluster_labels(self.embed(ctx, frontier), distance=cfg.cluster_distance)
        parent_of = {n.id: n.parent for n in ctx.tree}
        prog, _ = build_program(frontier, parent_of, weights, labels,
                                lambda_b=cfg.lambda_b, lambda_s=cfg.lambda_s)
        sol = solve_program(prog, time_limit=cfg.solver_time_limit)
        log = ctx.info.setdefault("ilp", [])
        if sol is None:
            log.append({"leaves": len(frontier), "solved": False})
            return rewards
        x, y, c = sol
        log.append({"leaves": len(frontier), "branches": len(prog.below),
                    "clusters": max(labels) + 1, "kept": sum(x), "branches_kept": sum(y),
                    "solved": True, "feasible": check_solution(prog, x, y, c)})
        return [r if keep else -math.inf for r, keep in zip(rewards, x)]
