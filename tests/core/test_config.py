"""Every Hydra YAML validates against its schema; every registered name has one."""

from pathlib import Path

import pytest
import yaml

from ttc.config import GenerationConfig, load_run_config
from ttc.ledger import Budget
from ttc.registry import BACKENDS, STRATEGIES, VERIFIERS, ConfigError, UnknownName

CONF = Path(__import__("ttc").__file__).parent / "conf"
REGISTRIES = {"backend": BACKENDS, "verifier": VERIFIERS, "strategy": STRATEGIES}


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_registered_name_has_a_yaml_that_validates(group):
    registry = REGISTRIES[group]
    for name in registry.names():
        path = CONF / group / f"{name}.yaml"
        assert path.exists(), f"{path} is missing"
        data = yaml.safe_load(path.read_text())
        assert data["name"] == name
        config = registry.config_class(name).model_validate(data)
        # exactly the schema's fields, no more, no fewer
        assert set(data) == set(type(config).model_fields), path


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_yaml_names_a_registered_config(group):
    for path in (CONF / group).glob("*.yaml"):
        assert path.stem in REGISTRIES[group], f"{path} has no registered config"


def test_shared_groups_validate():
    gen = yaml.safe_load((CONF / "generation" / "default.yaml").read_text())
    assert GenerationConfig.model_validate(gen).step_delimiter == "\n\n"
    for path in (CONF / "budget").glob("*.yaml"):
        Budget.model_validate(yaml.safe_load(path.read_text()))


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownName, match="registered: .*best_of_n"):
        STRATEGIES.make_config("nope")


def test_run_config_errors_are_one_sentence():
    base = {"backend": "simulated", "verifier": "simulated"}
    with pytest.raises(ConfigError, match="unknown strategy 'bogus'"):
        load_run_config({**base, "strategy": {"name": "bogus"}})
    with pytest.raises(ConfigError, match=r"strategy\.n: .*greater than 0; got -2"):
        load_run_config({**base, "strategy": {"name": "best_of_n", "n": -2}})
    with pytest.raises(ConfigError, match=r"strategy\.bogus is not a known setting"):
        load_run_config({**base, "strategy": {"name": "best_of_n", "bogus": 1}})
    with pytest.raises(ConfigError, match="budget"):
        load_run_config({**base, "strategy": "best_of_n", "budget": {"max_generated_tokens": 0}})


def test_dump_round_trips():
    config = load_run_config({"backend": "simulated", "verifier": "simulated",
                              "strategy": {"name": "best_of_n", "n": 3}})
    assert load_run_config(config.dump()) == config
