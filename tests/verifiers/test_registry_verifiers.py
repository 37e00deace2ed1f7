"""Every verifier has a YAML with exactly its config fields; the none verifier refuses."""

from pathlib import Path

import pytest
import yaml

from ttc.registry import VERIFIERS, ConfigError
from ttc.types import Problem

CONF = Path(__file__).resolve().parents[2] / "ttc" / "conf" / "verifier"
MINE = ["judge", "math_shepherd", "none", "qwen_prm", "rlhflow", "http", "programmatic"]


@pytest.mark.parametrize("name", MINE)
def test_yaml_matches_config(name):
    data = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cls = VERIFIERS.config_class(name)
    assert set(data) == set(cls.model_fields)
    assert VERIFIERS.make_config(data) == cls()


def test_none_verifier_raises_a_clear_error():
    v = VERIFIERS.build("none")
    with pytest.raises(ConfigError, match="needs a verifier but verifier=none"):
        v.score(Problem(question="q"), [["a"]])


def test_importing_verifiers_keeps_torch_lazy():
    import subprocess
    import sys

    code = "import sys, ttc.verifiers; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
