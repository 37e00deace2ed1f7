"""Ledger lines: a labelled part of the run is charged with the totals, never instead."""

from pathlib import Path

import yaml

from ttc.config import load_run_config
from ttc.ledger import ComputeLedger
from ttc.types import GenerationUsage, VerifierUsage

CONF = Path(__import__("ttc").__file__).parent / "conf"


def test_lines_are_charged_with_the_totals_and_merge():
    a = ComputeLedger()
    a.charge_generation(GenerationUsage(prefill_tokens=10, generated_tokens=5), line="draft")
    a.charge_generation(GenerationUsage(prefill_tokens=3, generated_tokens=1), line="target")
    a.charge_generation(GenerationUsage(generated_tokens=2))          # no line
    a.charge_verification(VerifierUsage(calls=2, tokens=7), line="layer2.rank")
    assert a.generated_tokens == 8 and a.lm_calls == 3 and a.verifier_calls == 2
    assert a.lines["draft"] == {"prefill_tokens": 10, "cached_tokens": 0,
                                "generated_tokens": 5, "lm_calls": 1}
    assert a.lines["layer2.rank"]["verifier_tokens"] == 7
    b = ComputeLedger()
    b.charge_generation(GenerationUsage(generated_tokens=4), line="draft")
    total = ComputeLedger.total([a.snapshot(), b])
    assert total.lines["draft"]["generated_tokens"] == 9
    assert total.snapshot().lines["target"]["prefill_tokens"] == 3


def test_the_draft_backend_group_validates_and_round_trips():
    data = yaml.safe_load((CONF / "draft_backend" / "simulated_small.yaml").read_text())
    config = load_run_config({"backend": "simulated", "verifier": "none",
                              "strategy": "spec_reason", "draft_backend": data})
    assert config.draft_backend.max_step_error == 0.8
    assert set(data) == set(type(config.draft_backend).model_fields)
    assert load_run_config(config.dump()) == config


def test_rules_or_top_logprobs_on_an_engine_that_ignores_them_are_one_clear_error():
    """A request asking for stop rules or top-k log-probs from an engine that does not run
    them while it decodes is refused before anything is generated or charged."""
    import pytest

    from ttc.ledger import ComputeLedger
    from ttc.metered import MeteredGenerator
    from ttc.registry import ConfigError
    from ttc.stopping import WindowConfidence
    from ttc.types import ExpandOutput, ExpandRequest, GenerationUsage, SamplingParams

    class PlainEngine:               # no supports_token_rules: rules would be ignored
        calls = 0

        def expand(self, requests, *, token_limit=None):
            PlainEngine.calls += 1
            return ExpandOutput(continuations=((),) * len(requests), usage=GenerationUsage())

    ledger = ComputeLedger()
    gen = MeteredGenerator(PlainEngine(), ledger)
    for params in (SamplingParams(top_logprobs=5),
                   SamplingParams(stop_rules=(WindowConfidence(window=4, threshold=1.0),))):
        with pytest.raises(ConfigError, match="PlainEngine backend does not run stop rules"):
            gen.expand([ExpandRequest(prefix=0, n=1, params=params)])
    assert PlainEngine.calls == 0 and ledger.lm_calls == 0
    gen.expand([ExpandRequest(prefix=0, n=1, params=SamplingParams())])
    assert PlainEngine.calls == 1
