"""ttc: test-time compute orchestration for LLM reasoning.

The core package holds types, protocols, the compute ledger, configs and the wiring
(pipeline, CLI). Search strategies, verifiers, engines and evals live in the subpackages
``ttc.strategies``, ``ttc.verifiers``, ``ttc.engine`` and ``ttc.evals``.
"""

from ttc.config import GenerationConfig, RunConfig
from ttc.ledger import Budget, BudgetExhausted, ComputeLedger
from ttc.pipeline import Pipeline
from ttc.tree import Node, NodeStatus, SearchTree
from ttc.types import (Candidate, Continuation, ExpandRequest, FinishReason, Problem,
                       Result, SamplingParams)

__version__ = "0.1.0"

__all__ = ["Budget", "BudgetExhausted", "Candidate", "ComputeLedger", "Continuation",
           "ExpandRequest", "FinishReason", "GenerationConfig", "Node", "NodeStatus",
           "Pipeline", "Problem", "Result", "RunConfig", "SamplingParams", "SearchTree"]
