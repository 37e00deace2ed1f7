"""Composing configs: the one place that turns command-line overrides into a config dict.

Contract: every command (``ttc solve``, ``config``, ``serve``, ``eval``, ``sweep``) and every
Python caller that starts from overrides goes through :func:`overrides_for` and
:func:`compose` (or :func:`run_config`). The only module that imports Hydra.

* Groups: :data:`RUN_GROUPS` (``backend``, ``verifier``, ``strategy``, ``generation``,
  ``budget``) map one to one onto :class:`~ttc.config.RunConfig`'s fields; an eval adds
  ``dataset`` (:data:`EVAL_GROUPS`). Their options are the YAML files in ``ttc/conf/<group>``.
* Shorthands: ``budget=N`` and ``budget.tokens=N`` mean ``budget.max_generated_tokens=N``
  (comma lists too, for sweeps); ``budget.verifier_calls`` and ``budget.wall_seconds`` name
  their ``max_`` fields; ``seed=N`` means ``generation.seed=N``.
* Merging: a later choice of one group replaces an earlier one (so ``--strategy beam
  strategy=astar`` is astar), and group choices are moved before field overrides, as Hydra
  needs.
* Sweeps: :func:`sweep_axes` reads Hydra's override grammar (``a,b,c``, ``range(0,3)``).

Every error is a :class:`~ttc.registry.ConfigError` naming the bad key or value and what is
allowed. Must NOT know: what any group's fields mean (pydantic validates them later).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ttc.registry import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
RUN_GROUPS = ("backend", "verifier", "strategy", "generation", "budget")
EVAL_GROUPS = RUN_GROUPS + ("dataset",)

_ALIASES = {"budget.tokens": "budget.max_generated_tokens",
            "budget.verifier_calls": "budget.max_verifier_calls",
            "budget.wall_seconds": "budget.max_wall_seconds",
            "seed": "generation.seed"}


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The choices of one config group: the YAML files in ``conf_dir/group``."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def expand_shorthands(overrides: list[str]) -> list[str]:
    """Spell out the shorthands (see the module docstring); other items pass unchanged."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if key == "budget" and sep and all(v.strip().isdigit() for v in value.split(",")):
            key = "budget.max_generated_tokens"
        if sep:
            key = _ALIASES.get(key, key)
        out.append(f"{key}{sep}{value}")
    return out


def overrides_for(*parts: list[str], groups: tuple[str, ...] = RUN_GROUPS) -> list[str]:
    """The override lists joined in order, shorthands spelled out, a later group choice
    winning, group choices first."""
    merged: list[str] = []
    for item in expand_shorthands([item for part in parts for item in part]):
        key = item.partition("=")[0]
        if key in groups:
            merged = [m for m in merged if m.partition("=")[0] != key]
        merged.append(item)
    return sorted(merged, key=lambda m: 0 if m.partition("=")[0] in groups else 1)


def _check_group_choices(overrides: list[str], groups: tuple[str, ...], conf_dir: Path) -> None:
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value "
                              f"(for example strategy=beam or strategy.n=16).")
        if key in groups:
            options = group_options(key, conf_dir)
            for choice in value.split(","):
                if choice not in options:
                    raise ConfigError(f"unknown {key} {choice!r}; available: "
                                      f"{', '.join(options)}.")


def compose(overrides: list[str], *, config_name: str = "config",
            groups: tuple[str, ...] = RUN_GROUPS, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """Compose ``conf_dir/config_name.yaml`` with ``overrides`` (already merged by
    :func:`overrides_for`) into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _check_group_choices(overrides, groups, conf_dir)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_hydra_message(err)) from err


def _hydra_message(err: Exception) -> str:
    text = str(err)
    if "Could not override" in text or "not in struct" in text:
        key = text.split("'")[1] if "'" in text else text
        return f"{key} is not a known setting; run `ttc config` to see the settings."
    return text.splitlines()[0]


def run_config(*overrides: list[str]):
    """The validated :class:`~ttc.config.RunConfig` of ``ttc solve``/``config``/``serve``."""
    from ttc.config import load_run_config

    return load_run_config(compose(overrides_for(*overrides)))


def compose_eval(overrides: list[str]) -> dict[str, Any]:
    """The composed (not yet validated) config of one ``ttc eval`` run."""
    return compose(overrides_for(overrides, groups=EVAL_GROUPS), config_name="eval",
                   groups=EVAL_GROUPS)


def sweep_axes(overrides: list[str]) -> tuple[dict[str, list[str]], list[str],
                                                list[list[str]]]:
    """(axes, fixed overrides, one override list per combination) of ``ttc sweep``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    items = overrides_for(overrides, groups=EVAL_GROUPS)
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from err
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for item, ov in zip(items, parsed):
        if ov.is_sweep_override():
            values = list(ov.sweep_string_iterator())
            if not values:
                raise ConfigError(f"sweep axis {ov.key_or_group!r} has no values.")
            axes[ov.key_or_group] = values
        else:
            fixed.append(item)
    combos = [fixed + [f"{k}={v}" for k, v in zip(axes, values)]
              for values in itertools.product(*axes.values())]
    return axes, fixed, combos
