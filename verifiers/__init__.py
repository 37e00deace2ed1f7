"""Verifiers: process reward models, judges and answer checking, registered by name.

Importing this package registers every verifier in ``ttc.registry.VERIFIERS``.
Must NOT know: how branches are stored or batched, or which strategy is calling.
"""

from ttc.verifiers import simulated  # noqa: F401  (registers)
from ttc.verifiers import http, judge, math_shepherd, none, programmatic, qwen_prm, rlhflow  # noqa: F401,E401,E501
from ttc.verifiers.answer_check import is_equivalent  # noqa: F401,E402  (ttc.verifiers.is_equivalent)
