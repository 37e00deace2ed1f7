"""Search strategies, one per module, each registered by name in ``STRATEGIES``.

Importing this package registers every strategy; the list below is the full catalogue.
Must NOT know: engine internals, Hydra, file formats.
"""

from ttc.strategies.base import STRATEGIES, SearchContext, SearchStrategy, StrategyConfig

from ttc.strategies import best_of_n, self_consistency  # noqa: F401  (registers)
from ttc.strategies import (adaptive_consistency, beam_search, dvts,  # noqa: F401
                            first_finish, particle_filtering, rpc)
from ttc.strategies import (adaptive, astar, ets, mcts, rebase,  # noqa: F401
                            threads)
from ttc.strategies import (compute_optimal, plan_and_budget,  # noqa: F401
                            self_eval)
from ttc.strategies import deepconf, dynasor  # noqa: F401

__all__ = ["STRATEGIES", "SearchContext", "SearchStrategy", "StrategyConfig"]
