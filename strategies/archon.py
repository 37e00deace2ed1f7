"""Composed pipelines (Archon, docs/algorithms.md "Archon"; Saad-Falcon et al.,
arXiv:2409.15254): layers that turn a list of candidates
into another, declared in YAML (``ttc solve --pipeline FILE``) or in Python.

    state = []                                   # candidates (steps + answer)
    for i, layer in enumerate(layers, 1):        # ledger line "layer<i>.<kind>"
        generate: state = sum(strategy.run(model) for each generator)   # any strategy
        rank:     state = top_k(state, by verifier score)               # one verifier call each
        critique: critiques[c] = LM(question + c + CRITIC_PROMPT)       # one call per candidate
        fuse:     state = [LM(question + state (+ critiques) + FUSE_PROMPT) for each fuser]
        verify:   state = [c for c in state if score(c) >= threshold] or [best]
    answer = select(state)                        # "first" (the paper), majority, ...

Construction rules checked at load time (paper, rules 1-2 and 4-5): the first layer
generates, and only the first. A critique is used by the next fuse layer (rule 3), then
dropped (fused candidates get no stale critiques: a pitfall of the reference code).
A critique belongs to the candidate it reviewed: a rank or verify layer between the
critique and the fuse layer reorders and filters candidates, and each kept candidate
keeps its own critique (the fuser's "Critique k" is about its "Response k"). The
rank and verify layers use the pipeline's verifier (a PRM as ranker, in place of the
paper's LLM list-ranker or PairRM). Generators may run on the draft model of a pair
(``model: draft``), so one program routes between two models.
Must NOT know: engine internals, Hydra, file formats.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from ttc.aggregate import Selection, select
from ttc.answers import extract_answer
from ttc.registry import STRATEGIES, ConfigError
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.types import Candidate, Frozen, Purpose

LAYER_KINDS = ("generate", "rank", "critique", "fuse", "verify")

CRITIC_PROMPT = ("Review the response above to the question. List its strengths and its "
                 "weaknesses, step by step.")
FUSE_PROMPT = ("Above are candidate responses to the question (and critiques of them). "
               "Write one response that keeps what is right in them and fixes what is "
               "wrong; state the final answer as \\boxed{}.")


class GeneratorSpec(Frozen):
    """One generator of a generate layer: a strategy on one model of the pipeline."""

    strategy: Any = Field(default_factory=lambda: {"name": "self_consistency", "n": 4})
    model: Literal["target", "draft"] = "target"
    keep: Literal["all", "answer"] = "all"   # all its candidates, or only its answer

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> Any:
        config = STRATEGIES.make_config(value)
        if config.name == "archon":
            raise ValueError("a generator cannot itself be an archon pipeline")
        return config


class GenerateLayer(Frozen):
    kind: Literal["generate"] = "generate"
    generators: tuple[GeneratorSpec, ...] = (GeneratorSpec(),)

    @field_validator("generators")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("a generate layer needs at least one generator")
        return value


class RankLayer(Frozen):
    kind: Literal["rank"] = "rank"
    top_k: PositiveInt = 4


class CritiqueLayer(Frozen):
    kind: Literal["critique"] = "critique"
    max_tokens: PositiveInt = 128


class FuseLayer(Frozen):
    kind: Literal["fuse"] = "fuse"
    fusers: PositiveInt = 1


class VerifyLayer(Frozen):
    kind: Literal["verify"] = "verify"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)


Layer = Annotated[Union[GenerateLayer, RankLayer, CritiqueLayer, FuseLayer, VerifyLayer],
                  Field(discriminator="kind")]


def check_layer_kinds(layers: Any, *, where: str = "layers") -> None:
    """One clear error for a layer list that is not a list of known layer kinds."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"{where} must be a non-empty list of layers; got {layers!r}.")
    for i, layer in enumerate(layers, 1):
        kind = layer.get("kind") if isinstance(layer, dict) else getattr(layer, "kind", None)
        if kind not in LAYER_KINDS:
            raise ConfigError(f"{where}: layer {i} has unknown kind {kind!r}; allowed: "
                              f"{', '.join(LAYER_KINDS)}.")


class ArchonConfig(StrategyConfig):
    name: Literal["archon"] = "archon"
    layers: tuple[Layer, ...] = (GenerateLayer(), RankLayer(top_k=4), FuseLayer())
    selection: Literal["first", "majority", "weighted", "best"] = "first"

    @classmethod
    def check_layers(cls, layers: Any, *, where: str) -> None:
        """One clear error for an unknown layer kind (the CLI checks pipeline files)."""
        check_layer_kinds(layers, where=where)

    @model_validator(mode="before")
    @classmethod
    def _known_kinds(cls, data: Any) -> Any:
        if isinstance(data, dict) and "layers" in data:
            check_layer_kinds(data["layers"], where="strategy.layers")
        return data

    @model_validator(mode="after")
    def _construction_rules(self) -> "ArchonConfig":
        kinds = [layer.kind for layer in self.layers]
        if kinds[0] != "generate":
            raise ValueError(f"the first layer must generate candidates; got {kinds[0]!r}")
        if "generate" in kinds[1:]:
            raise ValueError(f"only the first layer may generate; got layers {kinds}")
        return self


@register(ArchonConfig)
class Archon(SearchStrategy):
    config: ArchonConfig

    @property
    def needs_draft(self) -> bool:
        return any(g.model == "draft" for layer in self.config.layers
                   if isinstance(layer, GenerateLayer) for g in layer.generators)

    def search(self, ctx: SearchContext) -> None:
        state: list[Candidate] = []
        critiques: dict[int, str] = {}
        sizes: list[int] = []
        answers: list[list[str | None]] = []
        for i, layer in enumerate(self.config.layers, 1):
            line = f"layer{i}.{layer.kind}"
            if isinstance(layer, GenerateLayer):
                state = self._generate(ctx, layer, line)
            elif isinstance(layer, RankLayer):
                state, kept = self._rank(ctx, state, layer.top_k, line)
                critiques = _follow(critiques, kept)
            elif isinstance(layer, CritiqueLayer):
                critiques = self._critique(ctx, state, layer, line)
            elif isinstance(layer, FuseLayer):
                state = self._fuse(ctx, state, critiques, layer, line, i)
                critiques = {}
            elif isinstance(layer, VerifyLayer):
                state, kept = self._verify(ctx, state, layer.threshold, line)
                critiques = _follow(critiques, kept)
            ctx.candidates = list(state)
            sizes.append(len(state))
            answers.append([c.answer for c in state])
            ctx.info.update(layer_sizes=sizes, layer_answers=answers)
            ctx.emit(step=i, live=len(state), note=line)

    def choose(self, ctx: SearchContext) -> Candidate | None:
        if not ctx.candidates:
            return super().choose(ctx)
        if self.config.selection == "first":
            return ctx.candidates[0]
        return select(ctx.candidates, Selection(self.config.selection))

    # -- layers --------------------------------------------------------------------------
    def _generate(self, ctx: SearchContext, layer: GenerateLayer, line: str) -> list[Candidate]:
        out: list[Candidate] = []
        for j, spec in enumerate(layer.generators):
            gen = ctx.generator if spec.model == "target" else ctx.draft
            sub = STRATEGIES.build(spec.strategy, generation=ctx.generation.model_copy(
                update={"seed": ctx.seed("archon", j)}))
            result = sub.run(ctx.problem, generator=gen.inner, verifier=ctx.verifier.inner,
                             ledger=ctx.ledger, line=line)
            if spec.keep == "all":
                out.extend(result.candidates)
            elif result.answer is not None or result.trajectory:
                out.append(Candidate(steps=result.trajectory, answer=result.answer))
        return out

    def _scores(self, ctx: SearchContext, state: list[Candidate], line: str) -> list[float]:
        """Each candidate's last-step score; one without text scores 0 and costs no call."""
        steps = [[t for t in c.steps if t.strip()] for c in state]
        todo = [k for k, st in enumerate(steps) if st]
        scores = [0.0] * len(state)
        if todo:
            out = ctx.verifier.relabel(line).score(ctx.problem, [steps[k] for k in todo])
            for k, s in zip(todo, out.scores):
                scores[k] = s[-1] if s else 0.0
        return scores

    def _rank(self, ctx: SearchContext, state: list[Candidate], top_k: int,
              line: str) -> tuple[list[Candidate], list[int]]:
        """The ``top_k`` best candidates, best first, and their positions in ``state``."""
        scores = self._scores(ctx, state, line)
        order = sorted(range(len(state)), key=lambda k: -scores[k])[:top_k]
        return [state[k].model_copy(update={"score": scores[k]}) for k in order], order

    def _verify(self, ctx: SearchContext, state: list[Candidate], threshold: float,
                line: str) -> tuple[list[Candidate], list[int]]:
        """The candidates scoring >= ``threshold`` (else the best one), and their
        positions in ``state``."""
        scores = self._scores(ctx, state, line)
        kept = [k for k, s in enumerate(scores) if s >= threshold]
        if not kept and state:
            kept = sorted(range(len(state)), key=lambda k: -scores[k])[:1]
        return [state[k].model_copy(update={"score": scores[k]}) for k in kept], kept

    def _critique(self, ctx: SearchContext, state: list[Candidate], layer: CritiqueLayer,
                  line: str) -> dict[int, str]:
        gen = ctx.generator.relabel(line)
        nodes = [ctx.open_prompt(f"{ctx.problem.question}\n\nResponse:\n{c.text}\n\n"
                                 f"{CRITIC_PROMPT}", label=line) for c in state]
        children = ctx.expand(nodes, n=1, generator=gen, params=ctx.solution_params(
            ctx.seed(line), max_tokens=layer.max_tokens))
        ctx.release([n for n in nodes] + [c for cs in children for c in cs], prune=False)
        return {k: cs[0].text for k, cs in enumerate(children) if cs}

    def _fuse(self, ctx: SearchContext, state: list[Candidate], critiques: dict[int, str],
              layer: FuseLayer, line: str, index: int) -> list[Candidate]:
        if not state:
            return []
        shown = "\n\n".join(f"Response {k + 1}:\n{c.text}" for k, c in enumerate(state))
        # NOTE: critiques go after the responses, under their own header.
        notes = "\n\n".join(f"Critique {k + 1}:\n{t}" for k, t in sorted(critiques.items()))
        prompt = (f"{ctx.problem.question}\n\n{shown}\n\n"
                  + (f"Critiques:\n{notes}\n\n" if notes else "") + FUSE_PROMPT)
        node = ctx.open_prompt(prompt, label=line)
        (children,) = ctx.expand([node], n=layer.fusers, generator=ctx.generator.relabel(line),
                                 params=ctx.solution_params(ctx.seed(line, index)),
                                 purpose=Purpose.FUSE)
        fused = []
        for child in children:
            steps = tuple(ctx.steps_of(child)) or (child.text,)
            answer = child.answer if child.answer is not None else extract_answer(child.text)
            fused.append(Candidate(steps=steps, answer=answer, num_tokens=child.num_tokens))
        ctx.release([node, *children], prune=False)
        return fused


def _follow(critiques: dict[int, str], kept: list[int]) -> dict[int, str]:
    """Critiques re-keyed after a layer kept the candidates at positions ``kept`` (in their
    new order): each critique stays with the candidate it reviewed; dropped ones go."""
    return {new: critiques[old] for new, old in enumerate(kept) if old in critiques}
