"""ttc.sharing: one generator and one verifier for many concurrent searches."""

from __future__ import annotations

import threading
import time

from ttc.engine.backends.simulated import SimulatedGenerator
from ttc.protocols import Generator, SupportsEmbeddings
from ttc.sharing import Serialized, SerializedVerifier, shared_generator, shared_verifier
from ttc.types import ExpandRequest, Problem, SamplingParams


class _Counting(SimulatedGenerator):
    """Records how many expand calls are inside it at once."""

    def __init__(self):
        super().__init__()
        self.inside = 0
        self.most = 0
        self.tokenizer = lambda text: {"input_ids": [1, 2]}   # callable, like HF tokenizers

    def expand(self, requests, *, token_limit=None):
        self.inside += 1
        self.most = max(self.most, self.inside)
        time.sleep(0.01)
        try:
            return super().expand(requests, token_limit=token_limit)
        finally:
            self.inside -= 1


def test_unsafe_backends_run_one_call_at_a_time_and_keep_their_attributes():
    inner = _Counting()
    gen = shared_generator(inner)
    assert isinstance(gen, Serialized) and isinstance(gen, Generator)
    assert isinstance(gen, SupportsEmbeddings)            # the simulator can embed
    assert gen.tokenizer is inner.tokenizer              # not wrapped: verifiers read it
    roots = [gen.root(Problem(question=f"q{i}")) for i in range(8)]
    params = SamplingParams(max_tokens=20, seed=0)
    threads = [threading.Thread(target=gen.expand, args=(
        [ExpandRequest(prefix=r, n=2, params=params)],)) for r in roots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert inner.most == 1


def test_thread_safe_engines_and_verifiers_are_used_as_they_are():
    class Safe:
        thread_safe = True

    safe = Safe()
    assert shared_generator(safe) is safe
    assert shared_verifier(safe) is safe

    class Plain:
        incremental = True
        calls = 0

        def score(self, problem, trajectories):
            self.calls += 1
            return self.calls

    v = shared_verifier(Plain())
    assert isinstance(v, SerializedVerifier) and v.incremental
    assert v.score(None, []) == 1 and v.calls == 1
