import pytest

from ttc.ledger import Budget, BudgetExhausted, ComputeLedger
from ttc.types import GenerationUsage, VerifierUsage


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_charges_add_up_and_peak_is_a_max():
    ledger = ComputeLedger()
    ledger.charge_generation(GenerationUsage(prefill_tokens=100, cached_tokens=0,
                                             generated_tokens=40, peak_kv_bytes=1000))
    ledger.charge_generation(GenerationUsage(prefill_tokens=1, cached_tokens=139,
                                             generated_tokens=30, peak_kv_bytes=700))
    ledger.charge_verification(VerifierUsage(calls=4, tokens=90, cached_tokens=10))
    assert (ledger.prefill_tokens, ledger.cached_tokens, ledger.generated_tokens) == (101, 139, 70)
    assert ledger.lm_calls == 2
    assert (ledger.verifier_calls, ledger.verifier_tokens, ledger.verifier_cached_tokens) == (4, 90, 10)
    assert ledger.peak_kv_bytes == 1000


def test_ledgers_add_across_problems():
    a, b = ComputeLedger(), ComputeLedger()
    a.charge_generation(GenerationUsage(generated_tokens=5, peak_kv_bytes=10))
    b.charge_generation(GenerationUsage(generated_tokens=7, peak_kv_bytes=30))
    b.charge_verification(VerifierUsage(calls=2, tokens=3))
    b.budget_exhausted = True
    total = ComputeLedger.total([a, b.snapshot()])
    assert total.generated_tokens == 12
    assert total.verifier_calls == 2
    assert total.peak_kv_bytes == 30
    assert total.problems == 2
    assert total.budget_exhausted


def test_generation_budget_is_a_hard_cap():
    ledger = ComputeLedger(Budget(max_generated_tokens=50))
    assert ledger.check_generation() == 50
    ledger.charge_generation(GenerationUsage(generated_tokens=50))
    with pytest.raises(BudgetExhausted):
        ledger.check_generation()
    assert ledger.budget_exhausted
    with pytest.raises(RuntimeError, match="overspent"):
        ledger.charge_generation(GenerationUsage(generated_tokens=1))


def test_verifier_budget_refuses_a_batch_that_does_not_fit():
    ledger = ComputeLedger(Budget(max_verifier_calls=5))
    ledger.check_verification(5)
    ledger.charge_verification(VerifierUsage(calls=3))
    with pytest.raises(BudgetExhausted):
        ledger.check_verification(3)
    ledger.check_verification(2)


def test_wall_budget_and_phases_use_the_clock():
    clock = FakeClock()
    ledger = ComputeLedger(Budget(max_wall_seconds=10), clock=clock)
    with ledger.phase("generate"):
        clock.t += 3
    with ledger.phase("verify"):
        clock.t += 2
    clock.t += 1
    ledger.finish()
    assert ledger.wall_seconds == {"generate": 3, "verify": 2, "orchestrate": 1}
    clock.t = 10
    with pytest.raises(BudgetExhausted, match="wall-time"):
        ledger.check_generation()
    with pytest.raises(ValueError, match="unknown ledger phase"):
        with ledger.phase("nap"):
            pass


@pytest.mark.parametrize("field", ["max_generated_tokens", "max_verifier_calls", "max_wall_seconds"])
def test_budget_rejects_non_positive_limits(field):
    with pytest.raises(ValueError):
        Budget(**{field: 0})


def test_one_budget_signal_from_engine_cut_to_result():
    """A call the engine cut at its token cap marks the ledger (the one place that sets the
    flag); a node made from such a step carries the typed ``cut_by_budget`` (through JSON);
    a Result reads the flag from its ledger; the exception names the limit the ledger has."""
    from ttc.tree import Node
    from ttc.types import Result

    ledger = ComputeLedger(Budget(max_generated_tokens=10))
    ledger.charge_generation(GenerationUsage(generated_tokens=6))
    assert not ledger.budget_exhausted
    ledger.charge_generation(GenerationUsage(generated_tokens=4), cut=True)
    assert ledger.budget_exhausted
    err = ComputeLedger(Budget(max_verifier_calls=3)).exhausted("verifier-call")
    assert (err.what, err.limit, err.spent) == ("verifier-call", 3, 0)
    with pytest.raises(ValueError, match="unknown budget 'tokens'"):
        ledger.exhausted("tokens")
    node = Node(id=1, parent=0, finish="budget", cut_by_budget=True)
    assert Node.from_json(node.to_json()).cut_by_budget
    assert not Node.from_json(Node(id=2, parent=0).to_json()).cut_by_budget
    result = Result(problem_id="p", strategy="s", answer=None, ledger=ledger.snapshot())
    assert result.budget_exhausted and result.model_dump()["budget_exhausted"]
    assert not Result(problem_id="p", strategy="s", answer=None).budget_exhausted


def test_one_default_budget():
    """``Budget()``, the shipped YAML and ``Pipeline(budget=None)`` agree; a bare ledger
    only counts."""
    from pathlib import Path

    import yaml

    import ttc
    from ttc.ledger import DEFAULT_GENERATED_TOKENS

    shipped = yaml.safe_load((Path(ttc.__file__).parent / "conf/budget/default.yaml").read_text())
    assert Budget.model_validate(shipped) == Budget()
    assert Budget().max_generated_tokens == DEFAULT_GENERATED_TOKENS
    assert ttc.Pipeline().budget == Budget()
    assert ComputeLedger().budget.unlimited
