"""Particle filtering over reasoning steps, with particle Gibbs as an option (docs/algorithms.md#particle-filtering).

    P = LM.next_step(root, n=N); r = PRM.score(P)              # one call each
    while any(p.active for p in P):
        logw = logit(r)                         # paper: the newest step's score only
             | logw + logit(r_t) - logit(r_t-1) # ess_threshold set: weights carried over
        w = softmax(logw / softmax_temperature)
        if ess_threshold is None or ESS(w) < ess_threshold * N:
            P = [P[i] for i in resample(w, N)]  # systematic | multinomial; copies share KV
            logw = 0                            # (carried weights restart uniform)
        P.active = LM.next_step(P.active)       # ONE expand: each node x its copy count
        r.active = PRM.score(P.active)          # ONE verifier call
    return select(P)                            # argmax score (default), or a vote

Finished particles keep their final score and compete in later resamplings (the paper's
``resample_inactive``). Scores are clipped to [1e-6, 1 - 1e-6] before the logit.
Particle Gibbs (``gibbs_iterations`` > 1): after each sweep a reference particle is drawn
with probability ∝ its final weight; the next sweep runs N-1 free particles plus the
reference, whose step-t score joins every resampling; a resampled copy of the reference
is its path cut at step t and continues as a free particle.

Parallel tempering (``tempering_ladder`` non-empty, docs/algorithms.md#particle-filtering): chains at softmax temperatures
``(softmax_temperature, *tempering_ladder)``, coldest first, each of N particles, advance
in lockstep (all chains' active particles in ONE expand, ONE verifier call per step).
Chain k targets prior x r/(1-r)^(1/tau_k): hot chains keep diverse particles alive, the
cold chain exploits. Before each step's resampling, every neighbouring pair (k, k+1),
hottest pair first, proposes one swap of a uniformly drawn particle from each; it is
accepted with the Metropolis probability

    min(1, exp((1/tau_k - 1/tau_k+1) * (logit(r_k+1) - logit(r_k))))

so a better particle always moves to the colder chain. The answer comes from the cold
chain (the target). The swap schedule is not in the paper's text (unverified, docs/algorithms.md#particle-filtering);
the choices here are: one proposal per pair per step, uniform draws, N particles per
chain (the run costs about as many chains as plain PF), resampling every step (not with
``ess_threshold``), no particle Gibbs. Swaps are recorded in ``info["pt_swaps"]``;
``pf_trace`` entries carry their ``chain`` and ``temperature``.

Every resampling decision is recorded in ``Result.info["pf_trace"]`` (step, weights,
ESS, resampled). KV: nodes no particle points to any more are released right after
resampling; expanded nodes are unpinned (their children hold the prefix); finished
particles' KV is released at once (their text is all that is needed), except in Gibbs
sweeps, where the reference path stays pinned until the next reference is drawn.
Must NOT know: engine internals.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from ttc.aggregate import Selection
from ttc.ledger import BudgetExhausted
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import (best_score, ess, first_step_guard, logit,
                                   mark_step_done, resample, softmax, stop_if_cut)
from ttc.tree import Node, NodeStatus


class ParticleFilteringConfig(StrategyConfig):
    name: Literal["particle_filtering"] = "particle_filtering"
    n: PositiveInt = Field(default=8, description="N: particles")
    softmax_temperature: float = Field(default=1.0, description="tau in softmax(logit(r)/tau)")
    resampling: Literal["systematic", "multinomial"] = "systematic"
    ess_threshold: float | None = Field(
        default=None, description="None: resample every step (paper); kappa in (0, 1]: "
                                  "carry weights, resample when ESS < kappa * N")
    gibbs_iterations: PositiveInt = Field(default=1, description="> 1: particle Gibbs sweeps")
    tempering_ladder: tuple[float, ...] = Field(
        default=(), description="parallel tempering: softmax temperatures of the hotter "
                                "chains, increasing (each runs n particles); () = one chain")
    selection: Selection = Selection.BEST

    @field_validator("softmax_temperature")
    @classmethod
    def _positive_temperature(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"softmax_temperature must be > 0 (it divides the logits); "
                             f"got {value!r}")
        return value

    @field_validator("ess_threshold")
    @classmethod
    def _kappa_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"ess_threshold must be in (0, 1] or null; got {value!r}")
        return value

    @model_validator(mode="after")
    def _ladder_is_hotter(self) -> "ParticleFilteringConfig":
        temps = (self.softmax_temperature, *self.tempering_ladder)
        if any(b <= a for a, b in zip(temps, temps[1:])):
            raise ValueError(f"tempering_ladder must rise strictly above softmax_temperature "
                             f"({self.softmax_temperature}); got {list(self.tempering_ladder)}")
        if self.tempering_ladder and (self.gibbs_iterations > 1
                                      or self.ess_threshold is not None):
            raise ValueError("parallel tempering resamples every step in one sweep; set "
                             "gibbs_iterations 1 and ess_threshold null with a tempering_ladder")
        return self


def swap_probability(*, tau_cold: float, tau_hot: float, loglik_cold: float,
                     loglik_hot: float) -> float:
    """Metropolis acceptance of exchanging a cold-chain and a hot-chain particle.

    Chain k targets prior x exp(loglik / tau_k), loglik = logit(r); the exchange ratio is
    exp((1/tau_cold - 1/tau_hot) * (loglik_hot - loglik_cold)), capped at 1.
    """
    x = (1.0 / tau_cold - 1.0 / tau_hot) * (loglik_hot - loglik_cold)
    return 1.0 if x >= 0 else math.exp(x)


def _active(node: Node) -> bool:
    return node.status is not NodeStatus.TERMINAL


@register(ParticleFilteringConfig)
class ParticleFiltering(SearchStrategy):
    config: ParticleFilteringConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        rng = random.Random(ctx.seed("pf-resample"))
        ctx.info["pf_trace"] = []
        reference: list[Node] | None = None
        try:
            with first_step_guard(ctx, branches=cfg.n * (1 + len(cfg.tempering_ladder))):
                if cfg.tempering_ladder:
                    for node in self._tempered(ctx, rng):
                        if node.status is NodeStatus.TERMINAL:
                            ctx.offer(node)
                    return
                for sweep in range(cfg.gibbs_iterations):
                    final = self._sweep(ctx, sweep, reference, rng)
                    for node in final:
                        if node.status is NodeStatus.TERMINAL:
                            ctx.offer(node)
                    if sweep + 1 < cfg.gibbs_iterations:
                        reference = self._new_reference(ctx, final, reference, rng)
                    ref_ids = {n.id for n in reference} if reference else set()
                    ctx.release([n for n in final if n.id not in ref_ids], prune=False)
        except BudgetExhausted:
            # the run stops mid-sweep: the finished particles of this sweep are offered
            offered = {c.node_id for c in ctx.candidates}
            for nid in dict.fromkeys(ctx.info.get("particles", ())):
                if ctx.tree[nid].status is NodeStatus.TERMINAL and nid not in offered:
                    ctx.offer(ctx.tree[nid])
            raise
        finally:
            if reference:
                ctx.generator.release([n.handle for n in reference])

    # -- one particle-filter sweep -------------------------------------------------------
    def _sweep(self, ctx: SearchContext, sweep: int, reference: list[Node] | None,
               rng: random.Random) -> list[Node]:
        cfg = self.config
        n_free = cfg.n - (1 if reference else 0)
        (particles,) = ctx.expand([ctx.root], n=n_free,
                                  params=ctx.step_params(ctx.seed("pf", sweep, 0)))
        ctx.score(particles)
        mark_step_done(ctx, particles)
        ctx.info["particles"] = [p.id for p in particles]
        stop_if_cut(ctx, particles)
        keep_pinned = {n.id for n in reference} if reference else set()
        self._release_finished(ctx, particles, keep_pinned)
        t = 1

        def pool_of(ps: list[Node]) -> list[Node]:
            return ps + ([reference[min(t, len(reference)) - 1]] if reference else [])

        prev = [0.0] * cfg.n                     # logit(r_0) = logit(1/2) = 0
        logw = [0.0] * cfg.n
        while any(_active(p) for p in pool_of(particles)):
            pool = pool_of(particles)
            now = [logit(_r(p)) for p in pool]
            if cfg.ess_threshold is None:
                logw = now
            else:
                logw = [lw + a - b for lw, a, b in zip(logw, now, prev)]
            weights = softmax(logw, temperature=cfg.softmax_temperature)
            size = ess(weights)
            do = cfg.ess_threshold is None or size < cfg.ess_threshold * cfg.n
            ctx.info["pf_trace"].append({"sweep": sweep, "step": t,
                                         "nodes": [p.id for p in pool], "weights": weights,
                                         "logw": logw, "ess": size, "resampled": do})
            if do:
                idx = resample(weights, n_free, rng, scheme=cfg.resampling)
                new = [pool[i] for i in idx]
                kept = {p.id for p in new} | keep_pinned
                ctx.release([p for p in pool if p.id not in kept])
                particles = new
                logw = [0.0] * cfg.n
            prev = [logit(_r(p)) for p in pool_of(particles)]
            particles, kids = self._advance(ctx, sweep, t, particles, keep_pinned)
            ctx.info["particles"] = [p.id for p in particles]
            stop_if_cut(ctx, kids)
            t += 1
            ctx.emit(step=t, live=sum(_active(p) for p in particles),
                     best_score=best_score(particles), note=f"ESS {size:.1f}")
        return particles

    def _advance(self, ctx: SearchContext, sweep: int, t: int, particles: list[Node],
                 keep_pinned: set[int]) -> tuple[list[Node], list[Node]]:
        """One step for every active particle: one expand, copies of a node as its n.

        Returns the particles after the step and the new children (for the caller's
        budget-cut check, made once it has recorded the particles)."""
        copies = Counter(p.id for p in particles if _active(p))
        if not copies:
            return particles, []
        parents = [ctx.tree[i] for i in copies]
        params = [ctx.step_params(ctx.seed("pf", sweep, t, p.id)) for p in parents]
        groups = ctx.expand(parents, n=[copies[p.id] for p in parents], params=params)
        ctx.release([p for p in parents if p.id not in keep_pinned], prune=False)
        children = {p.id: list(g) for p, g in zip(parents, groups)}
        new_children = [c for g in groups for c in g]
        ctx.score(new_children)
        mark_step_done(ctx, new_children)
        self._release_finished(ctx, new_children, keep_pinned)
        out = [children[p.id].pop(0) if _active(p) else p for p in particles]
        return out, new_children

    # -- parallel tempering --------------------------------------------------------------
    def _tempered(self, ctx: SearchContext, rng: random.Random) -> list[Node]:
        """Chains at rising temperatures in lockstep, with neighbour swaps; returns the
        cold chain's final particles."""
        cfg = self.config
        temps = (cfg.softmax_temperature, *cfg.tempering_ladder)
        n = cfg.n
        ctx.info["pt_swaps"] = []
        groups = ctx.expand([ctx.root] * len(temps), n=n,
                            params=[ctx.step_params(ctx.seed("pf-pt", k, 0))
                                    for k in range(len(temps))])
        chains = [list(g) for g in groups]
        flat = [p for ch in chains for p in ch]
        ctx.score(flat)
        mark_step_done(ctx, flat)
        ctx.info["particles"] = [p.id for p in chains[0]]
        stop_if_cut(ctx, flat)
        self._release_finished(ctx, flat, set())
        t = 1
        while any(_active(p) for ch in chains for p in ch):
            self._swap(ctx, chains, temps, t, rng)
            before = [p for ch in chains for p in ch]
            for k, tau in enumerate(temps):
                pool = chains[k]
                logw = [logit(_r(p)) for p in pool]
                weights = softmax(logw, temperature=tau)
                ctx.info["pf_trace"].append({
                    "sweep": 0, "chain": k, "temperature": tau, "step": t,
                    "nodes": [p.id for p in pool], "weights": weights, "logw": logw,
                    "ess": ess(weights), "resampled": True})
                chains[k] = [pool[i] for i in resample(weights, n, rng,
                                                       scheme=cfg.resampling)]
            kept = {p.id for ch in chains for p in ch}
            ctx.release([p for p in before if p.id not in kept])
            flat, kids = self._advance(ctx, 0, t, [p for ch in chains for p in ch], set())
            chains = [flat[k * n:(k + 1) * n] for k in range(len(temps))]
            ctx.info["particles"] = [p.id for p in chains[0]]
            stop_if_cut(ctx, kids)
            t += 1
            ctx.emit(step=t, live=sum(_active(p) for p in flat),
                     best_score=best_score(chains[0]),
                     note=f"{sum(s['accepted'] for s in ctx.info['pt_swaps'])} swaps")
        return chains[0]

    def _swap(self, ctx: SearchContext, chains: list[list[Node]], temps: tuple[float, ...],
              t: int, rng: random.Random) -> None:
        """One Metropolis swap proposal per neighbouring pair of chains, hottest first."""
        for k in reversed(range(len(chains) - 1)):
            i = rng.randrange(len(chains[k]))
            j = rng.randrange(len(chains[k + 1]))
            cold, hot = chains[k][i], chains[k + 1][j]
            lc, lh = logit(_r(cold)), logit(_r(hot))
            prob = swap_probability(tau_cold=temps[k], tau_hot=temps[k + 1],
                                    loglik_cold=lc, loglik_hot=lh)
            u = rng.random()
            accepted = u < prob
            if accepted:
                chains[k][i], chains[k + 1][j] = hot, cold
            ctx.info["pt_swaps"].append({
                "step": t, "chains": [k, k + 1], "nodes": [cold.id, hot.id],
                "loglik": [lc, lh], "prob": prob, "u": u, "accepted": accepted})

    def _release_finished(self, ctx: SearchContext, nodes: list[Node], keep: set[int]) -> None:
        if self.config.gibbs_iterations > 1:
            return       # the next reference is drawn from the finished leaves
        ctx.release([n for n in nodes if not _active(n) and n.id not in keep], prune=False)

    # -- particle Gibbs ------------------------------------------------------------------
    def _new_reference(self, ctx: SearchContext, final: list[Node],
                       old: list[Node] | None, rng: random.Random) -> list[Node] | None:
        scored = [p for p in final if p.score is not None]
        if not scored:
            return old
        weights = softmax([logit(_r(p)) for p in scored],
                          temperature=self.config.softmax_temperature)
        (leaf,) = rng.choices(scored, weights=weights, k=1)
        path = ctx.tree.path(leaf)
        ctx.generator.pin([n.handle for n in path])
        if old:
            ctx.generator.release([n.handle for n in old])
        ctx.info.setdefault("references", []).append(leaf.id)
        return path


def _r(node: Node) -> float:
    return node.score if node.score is not None else 0.5
