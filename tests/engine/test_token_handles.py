"""TokenHandleGenerator from many threads: the handle table is locked per operation, never
around a whole ``expand`` (a fake engine stands in for vLLM or a server)."""

from __future__ import annotations

import threading
from typing import Sequence

import pytest

from ttc.engine.backends.token_handles import Job, JobResult, Sample, TokenHandleGenerator
from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams


class _FakeEngine(TokenHandleGenerator):
    """Continues a prompt with ``max_tokens`` tokens ``(len(prompt) + i) % 97``.

    A job whose prompt starts with ``hold_prefix`` waits in ``_generate`` until ``go`` is
    set, after setting ``entered``.
    """

    kv_bytes_per_token = 2

    def __init__(self) -> None:
        super().__init__()
        self.hold_prefix: tuple[int, ...] | None = None
        self.entered = threading.Event()
        self.go = threading.Event()

    def format_prompt(self, problem: Problem) -> tuple[tuple[int, ...], str]:
        ids = tuple(problem.question.encode())
        return ids, problem.question

    def _generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        hp = self.hold_prefix
        if hp is not None and any(j.prompt_ids[:len(hp)] == hp for j in jobs):
            self.entered.set()
            assert self.go.wait(timeout=60), "the test never released the held expand"
        out = []
        for j in jobs:
            ids = tuple((len(j.prompt_ids) + i) % 97 for i in range(j.max_tokens))
            sample = Sample(token_ids=ids, text="x" * len(ids), logprobs=(),
                            finish=FinishReason.MAX_TOKENS)
            out.append(JobResult(samples=(sample,) * j.n, prompt_tokens=len(j.prompt_ids),
                                 cached_tokens=0))
        return out


P = SamplingParams(temperature=0.0, max_tokens=4)


def test_other_threads_use_the_handle_table_while_an_expand_is_in_the_engine():
    gen = _FakeEngine()
    held_root = gen.root(Problem(question="held"))
    gen.hold_prefix = tuple(b"held")
    result: dict[str, object] = {}
    held = threading.Thread(target=lambda: result.setdefault(
        "out", gen.expand([ExpandRequest(prefix=held_root, n=2, params=P)])))
    held.start()
    assert gen.entered.wait(timeout=30)
    # The held expand is inside _generate now; every other operation must still complete.
    done = threading.Event()
    errors: list[BaseException] = []

    def others() -> None:
        try:
            use_the_table()
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)
        done.set()

    def use_the_table() -> None:
        root = gen.root(Problem(question="free"))
        out = gen.expand([ExpandRequest(prefix=root, n=3, params=P)])
        child = out.continuations[0][0].handle
        assert gen.token_ids(child) == list(b"free") + [4, 5, 6, 7]
        assert gen.text_of(child) == "xxxx" and gen.prompt_text(child) == "freexxxx"
        gen.pin([child], value=1.0)
        gen.release([root] + [c.handle for c in out.continuations[0]])
        gen.kv_bytes()

    worker = threading.Thread(target=others)
    worker.start()
    worker.join(timeout=30)
    finished_while_held = done.is_set()
    gen.go.set()
    held.join(timeout=30)
    assert finished_while_held, "an expand in the engine blocked the handle table"
    assert not errors, errors
    conts = result["out"].continuations[0]                       # type: ignore[union-attr]
    assert [gen.token_ids(c.handle) for c in conts] == [list(b"held") + [4, 5, 6, 7]] * 2
    # Only the held call's root and children remain: 4 + 2 x 4 tokens x 2 bytes.
    assert gen.kv_bytes() == (4 + 8) * 2


def test_releasing_a_prefix_during_its_expand_is_a_clear_error():
    gen = _FakeEngine()
    root = gen.root(Problem(question="held"))
    gen.hold_prefix = tuple(b"held")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            gen.expand([ExpandRequest(prefix=root, n=1, params=P)])
        except ValueError as err:
            errors.append(err)

    t = threading.Thread(target=run)
    t.start()
    assert gen.entered.wait(timeout=30)
    gen.release([root])
    gen.go.set()
    t.join(timeout=30)
    assert len(errors) == 1 and "released while it was being expanded" in str(errors[0])
    assert gen.kv_bytes() == 0


def test_many_threads_expand_and_release_without_losing_handles():
    gen = _FakeEngine()
    failures: list[BaseException] = []

    def search(i: int) -> None:
        try:
            root = gen.root(Problem(question=f"q{i:02d}"))
            frontier = [root]
            for _ in range(20):
                out = gen.expand([ExpandRequest(prefix=h, n=2, params=P) for h in frontier])
                kids = [c.handle for cs in out.continuations for c in cs]
                gen.release(frontier[1:] + kids[2:])        # keep the first two children
                frontier = [frontier[0]] + kids[:2]
                assert all(gen.token_count(h) >= 3 for h in frontier)
            gen.release(frontier)
        except BaseException as err:  # noqa: BLE001  (reported below)
            failures.append(err)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert gen.resident_tokens() == 0 and not gen._handles


def test_an_unknown_handle_is_named():
    gen = _FakeEngine()
    with pytest.raises(ValueError, match="handle 12345 is not live"):
        gen.text_of(12345)  # type: ignore[arg-type]
