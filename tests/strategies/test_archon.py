"""Composed pipelines: layers run in order, each with its own ledger line; any strategy
can be a generator, on either model of a pair; the fuser reads the candidates; a file
with an unknown layer is one clear error."""

import pytest
import yaml
from typer.testing import CliRunner

from fakes import SIM_PROMPT_TOKENS as PROMPT_TOKENS
from fakes import model_pair as pair
from fakes import sim_problem as problem
from fakes import solve
from ttc.cli import app
from ttc.registry import STRATEGIES, ConfigError
from ttc.strategies.archon import (ArchonConfig, FuseLayer, GenerateLayer, GeneratorSpec,
                                   RankLayer, VerifyLayer)

LAYERS = [
    {"kind": "generate", "generators": [
        {"strategy": {"name": "self_consistency", "n": 4}},
        {"strategy": {"name": "best_of_n", "n": 3}, "model": "draft", "keep": "answer"}]},
    {"kind": "rank", "top_k": 3},
    {"kind": "critique", "max_tokens": 32},
    {"kind": "fuse", "fusers": 2},
    {"kind": "verify", "threshold": 0.5},
]


def test_layers_run_in_order_and_each_has_its_ledger_line():
    large, small = pair()
    result = solve({"name": "archon", "layers": LAYERS}, large, draft=small)
    lines = result.ledger.lines
    assert list(lines) == ["layer1.generate", "layer2.rank", "layer3.critique",
                           "layer4.fuse", "layer5.verify"]
    assert result.info["layer_sizes"][:4] == [5, 3, 3, 2]     # 4 votes + 1 answer; top 3
    assert 1 <= result.info["layer_sizes"][4] <= 2
    assert lines["layer2.rank"]["verifier_calls"] == 5
    assert lines["layer3.critique"]["lm_calls"] == 1           # three critiques, one batch
    assert lines["layer5.verify"]["verifier_calls"] == 2
    for name in ("generated_tokens", "prefill_tokens", "lm_calls", "verifier_calls"):
        assert sum(l.get(name, 0) for l in lines.values()) == getattr(result.ledger, name)
    # Both models generated in layer 1 (best-of-3 on the draft model scored its 3 too).
    assert lines["layer1.generate"]["lm_calls"] == 2
    assert lines["layer1.generate"]["verifier_calls"] == 3
    # The fuser's prompt quotes the candidates and the critiques: it is long.
    assert lines["layer4.fuse"]["prefill_tokens"] > PROMPT_TOKENS + 50


def test_the_fuser_answers_with_a_quoted_answer():
    large, _ = pair()
    cfg = ArchonConfig(layers=(GenerateLayer(generators=(GeneratorSpec(
        strategy={"name": "self_consistency", "n": 6}),)), FuseLayer(fusers=4)))
    for pid in "abcd":
        result = STRATEGIES.build(cfg).run(problem(difficulty=0.9, pid=pid),
                                           generator=large, verifier=None)
        generated, fused = result.info["layer_answers"]
        assert len(generated) == 6 and len(fused) == 4
        assert set(fused) <= set(generated)     # the fuser picks among what it was shown


def test_python_and_yaml_declarations_are_the_same_pipeline():
    py = ArchonConfig(layers=(GenerateLayer(), RankLayer(top_k=2), VerifyLayer()))
    data = yaml.safe_load("""
layers:
  - kind: generate
  - kind: rank
    top_k: 2
  - kind: verify
""")
    assert STRATEGIES.make_config({"name": "archon", **data}) == py


@pytest.mark.parametrize("layers, message", [
    ([{"kind": "generate"}, {"kind": "blend"}], "layer 2 has unknown kind 'blend'"),
    ([{"kind": "rank"}], "first layer must generate"),
    ([{"kind": "generate"}, {"kind": "generate"}], "only the first layer may generate"),
    ([{"kind": "generate", "generators": [{"strategy": {"name": "archon"}}]}],
     "cannot itself be an archon"),
])
def test_bad_layers_are_refused(layers, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        STRATEGIES.make_config({"name": "archon", "layers": layers})


def test_a_draft_generator_needs_the_pair():
    large, _ = pair()
    with pytest.raises(ConfigError, match="needs a draft model"):
        solve({"name": "archon", "layers": LAYERS}, large)


runner = CliRunner()


def test_solve_pipeline_file_runs_and_prints_each_layer(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"layers": LAYERS[:1] + LAYERS[2:]}))
    out = runner.invoke(app, ["solve", "Q?", "--pipeline", str(path), "backend=simulated",
                              "verifier=simulated", "draft_backend=simulated_small", "-q"])
    assert out.exit_code == 0, out.output
    for label in ("layer1.generate", "layer2.critique", "layer3.fuse", "layer4.verify"):
        assert f"  {label}:" in out.output


@pytest.mark.parametrize("text, message", [
    ("layers:\n  - kind: generate\n  - kind: blend\n",
     "layer 2 has unknown kind 'blend'; allowed: generate, rank, critique, fuse, verify"),
    ("just a string\n", "must hold a list of layers"),
    ("layers: [\n", "is not valid YAML"),
])
def test_a_bad_pipeline_file_is_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    out = runner.invoke(app, ["solve", "Q?", "--pipeline", str(path), "backend=simulated",
                              "verifier=simulated"])
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


# -- critiques stay with their responses through rank and verify layers ----------------------
class _Recording:
    """A simulated engine that remembers each prompt it was given and what each prefix was
    continued with (to read which critique the fuser was shown for which response)."""

    def __init__(self, gen) -> None:
        self.gen = gen
        self.prompts: dict = {}            # handle -> prompt text
        self.continued: dict = {}          # handle -> texts of its continuations

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def root(self, prob):
        handle = self.gen.root(prob)
        self.prompts[handle] = prob.question
        return handle

    def expand(self, requests, **kw):
        out = self.gen.expand(requests, **kw)
        for req, conts in zip(requests, out.continuations):
            self.continued.setdefault(req.prefix, []).extend(c.text for c in conts)
        return out


def _pairs_shown_to_the_fuser(rec) -> list[tuple[str, str]]:
    """(response, critique) as the fuse prompt numbers them."""
    from ttc.strategies.archon import CRITIC_PROMPT, FUSE_PROMPT

    critique_of = {}
    for handle, prompt in rec.prompts.items():
        if prompt.endswith(CRITIC_PROMPT):
            response = prompt.split("\n\nResponse:\n", 1)[1][: -len(CRITIC_PROMPT) - 2]
            critique_of[response] = rec.continued[handle][0]
    (fuse,) = [p for p in rec.prompts.values() if p.endswith(FUSE_PROMPT)]
    body, notes = fuse.split("\n\nCritiques:\n", 1)
    responses = body.split("\n\nResponse ")[1:]
    critiques = notes[: -len(FUSE_PROMPT)].strip().split("\n\nCritique ")
    shown = []
    for k, (resp, crit) in enumerate(zip(responses, critiques), 1):
        head = f"{k}:\n"
        crit = crit.removeprefix("Critique ")
        assert resp.startswith(head) and crit.startswith(head)
        shown.append((resp[len(head):], crit[len(head):]))
    assert len(responses) == len(critiques)
    return shown, critique_of


@pytest.mark.parametrize("middle", [{"kind": "rank", "top_k": 3},
                                    {"kind": "verify", "threshold": 0.5}])
def test_each_critique_stays_with_its_response_through_a_middle_layer(middle):
    large, _ = pair()
    layers = [{"kind": "generate", "generators": [{"strategy": {"name": "self_consistency",
                                                                "n": 6}}]},
              {"kind": "critique", "max_tokens": 24}, middle, {"kind": "fuse"}]
    checked = 0
    for pid in "abcd":
        rec = _Recording(large)
        result = solve({"name": "archon", "layers": layers}, rec,
                       prob=problem(difficulty=0.7, pid=pid))
        shown, critique_of = _pairs_shown_to_the_fuser(rec)
        assert len(shown) == result.info["layer_sizes"][2]
        for response, critique in shown:
            assert critique_of[response.strip()] == critique.strip()
            checked += 1
        # the middle layer changed the order or the set, so position alone would mismatch
    assert checked >= 4
