"""Registries by name: strategies, verifiers and backends, each with its pydantic config.

Contract: an implementation registers itself with its config class, whose ``name``
field (a ``Literal``) is the registry key::

    @STRATEGIES.register(BeamConfig)
    class BeamSearch(SearchStrategy): ...

The registries live here so that config validation (``ttc.config``) can find a config
class by name; the packages that fill them (``ttc.strategies``, ``ttc.verifiers``,
``ttc.engine``) are imported by name on first lookup. An unknown name raises
:class:`UnknownName`, whose message lists the registered names.
Must NOT know: any particular implementation.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration error: one sentence naming the value and what is allowed."""


class UnknownName(ConfigError):
    pass


def format_validation_error(where: str, err: ValidationError) -> str:
    """Turn a pydantic error into one sentence naming the field, the value and the rule."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    field = f"{where}.{loc}" if loc else where
    value = first.get("input")
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        return f"{field} is not a known setting (got {value!r})."
    if first.get("type") == "missing":
        return f"{field} is required."
    return f"{field}: {msg}; got {value!r}."


class Registry(Generic[T]):
    def __init__(self, kind: str, *, plugin_module: str) -> None:
        self.kind = kind
        self.plugin_module = plugin_module
        self._entries: dict[str, tuple[type[BaseModel], Callable[..., T]]] = {}
        self._loaded = False

    def register(self, config_cls: type[BaseModel]) -> Callable[[Callable[..., T]], Callable[..., T]]:
        name_field = config_cls.model_fields.get("name")
        if name_field is None or not isinstance(name_field.default, str):
            raise TypeError(f"{config_cls.__name__} needs a `name` field with a default.")
        name = name_field.default

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name][1] is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._entries[name] = (config_cls, factory)
            return factory

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.plugin_module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def entry(self, name: str) -> tuple[type[BaseModel], Callable[..., T]]:
        self._load()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; registered: "
                              f"{', '.join(self.names())}.")
        return self._entries[name]

    def config_class(self, name: str) -> type[BaseModel]:
        return self.entry(name)[0]

    def make_config(self, data: Any) -> BaseModel:
        """Validate a dict (with ``name``), a bare name, or a config object."""
        if isinstance(data, BaseModel):
            return data
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(f"{self.kind} config must name one of: "
                              f"{', '.join(self.names())}; got {data!r}.")
        cls = self.config_class(str(data["name"]))
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(self.kind, err)) from err

    def build(self, config: Any, **kwargs: Any) -> T:
        config = self.make_config(config)
        _, factory = self.entry(config.name)
        return factory(config, **kwargs)


STRATEGIES: Registry[Any] = Registry("strategy", plugin_module="ttc.strategies")
VERIFIERS: Registry[Any] = Registry("verifier", plugin_module="ttc.verifiers")
BACKENDS: Registry[Any] = Registry("backend", plugin_module="ttc.engine")
