"""Budget forcing: the cap forces the end delimiter inside the batch (no restart, no
re-prefill), extensions replace attempted ends by "Wait", any strategy's branches can
carry the control, and a model without delimiters gets one clear error."""

import pytest

from fakes import SIM_PROMPT_TOKENS as PROMPT_TOKENS
from fakes import sim_problem as problem
from fakes import solve, thinking_engine
from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.registry import ConfigError

FORCED_AT_CAP = ["</think>", "Final", "Answer:"]       # "</think>\nFinal Answer:" as words


def _thinking_words(text: str) -> list[str]:
    return text.split("</think>")[0].split()


def test_cap_forces_the_end_in_the_batch_without_re_prefill():
    gen = thinking_engine()
    result = solve({"name": "budget_forcing", "n": 2, "cap": 20}, gen)
    led = result.ledger
    # One engine call: a restart would be a second call re-prefilling prompt + trace.
    assert led.lm_calls == 1
    # The prompt (template, the question's 2 words, "<think>") once; forced words are
    # decoded (generated), and counted again as forced.
    assert led.prefill_tokens == PROMPT_TOKENS + 2 + 1
    assert led.forced_tokens == 2 * len(FORCED_AT_CAP)
    assert result.info["thinking_tokens"] == [20, 20]
    assert result.info["forced_ends"] == 2
    for cand in result.candidates:
        words = cand.text.split()
        assert len(_thinking_words(cand.text)) == 20
        assert words[20:23] == FORCED_AT_CAP           # forced right at the cap
        assert cand.answer is not None
    assert led.generated_tokens == sum(len(c.text.split()) for c in result.candidates)


def test_extend_replaces_attempted_ends_with_wait():
    natural = solve({"name": "budget_forcing", "n": 1, "cap": 1000, "extend": 0},
                    thinking_engine())
    extended = solve({"name": "budget_forcing", "n": 1, "cap": None, "extend": 2},
                     thinking_engine())
    text = extended.candidates[0].text
    assert extended.info["waits"] == 2
    assert text.count("Wait") == 2
    assert text.count("</think>") == 1                 # only the end finally allowed
    assert extended.ledger.lm_calls == 1
    # the prompt once (template, the question's 2 words, "<think>"); the two "Wait"s are
    # decoded, so generated, and counted as forced
    assert extended.ledger.prefill_tokens == PROMPT_TOKENS + 2 + 1
    assert extended.ledger.forced_tokens == 2
    assert natural.info["forced_ends"] == 0 and natural.info["waits"] == 0
    # Two more thinking steps than the natural length (wait_steps = 1 per "Wait").
    assert text.count("Step ") == natural.candidates[0].text.count("Step ") + 2
    assert extended.info["thinking_tokens"][0] > natural.info["thinking_tokens"][0]


def test_a_model_without_thinking_delimiters_is_one_clear_error():
    gen = SimulatedGenerator(SimulatedBackendConfig())
    with pytest.raises(ConfigError, match="needs a model that thinks between delimiters"):
        solve({"name": "budget_forcing", "cap": 64}, gen)
    with pytest.raises(ConfigError, match="generation.thinking_cap"):
        solve({"name": "best_of_n", "n": 2}, gen,
              generation=GenerationConfig(thinking_cap=64))


def test_extend_on_an_engine_that_cannot_replace_tokens_is_refused():
    class CapOnly(SimulatedGenerator):
        can_replace_tokens = False

    gen = CapOnly(SimulatedBackendConfig(thinking=True))
    with pytest.raises(ConfigError, match="cannot"):
        solve({"name": "budget_forcing", "cap": None, "extend": 1}, gen)
    assert solve({"name": "budget_forcing", "cap": 8, "extend": 0},
                 gen).info["forced_ends"] == 1


def test_budget_forcing_needs_a_cap_or_extensions():
    with pytest.raises(ConfigError, match="cap .* or extensions"):
        solve({"name": "budget_forcing", "cap": None, "extend": 0}, thinking_engine())


def test_a_cap_that_leaves_no_room_in_max_tokens_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"strategy.cap \(1024\) must be below "
                                          r"generation.max_tokens \(1024\)"):
        solve({"name": "budget_forcing", "cap": 1024}, thinking_engine())


def test_step_wise_strategies_carry_the_cap_across_calls():
    """Beam search expands one step per call: the cap counts the whole path's thinking."""
    cap = 50
    gen = thinking_engine()
    result = solve({"name": "beam", "n": 4, "width": 2, "num_iterations": 12}, gen,
                   prob=problem(num_steps=6),
                   generation=GenerationConfig(thinking_cap=cap))
    nodes = result.tree["nodes"]
    thinking = [n["extra"]["thinking"] for n in nodes if "thinking" in n["extra"]]
    assert thinking, "branches carried no thinking state"
    assert max(t["tokens"] for t in thinking) == cap    # reached, never passed
    assert any(t["forced"] for t in thinking)
    for cand in result.candidates:
        assert len(_thinking_words(cand.text)) <= cap


def test_setting_the_budget_twice_is_refused():
    with pytest.raises(ConfigError, match="set the thinking budget once"):
        solve({"name": "budget_forcing", "cap": 10}, thinking_engine(),
              generation=GenerationConfig(thinking_cap=20))


def test_the_cli_refuses_budget_forcing_without_delimiters_in_one_line():
    from typer.testing import CliRunner

    from ttc.cli import app

    out = CliRunner().invoke(app, ["solve", "Q?", "-s", "budget_forcing", "backend=simulated",
                                   "verifier=simulated"])
    assert out.exit_code == 2, out.output
    assert "needs a model that thinks between delimiters" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    ok = CliRunner().invoke(app, ["solve", "Q?", "-s", "budget_forcing", "backend=simulated",
                                  "backend.thinking=true", "strategy.cap=16", "-q",
                                  "verifier=simulated", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"forced_ends": 1' in ok.output
