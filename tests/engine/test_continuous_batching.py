"""The native engine as a continuous-batching step loop shared by many callers.

Every test here uses a 2-layer fp32 random-weight model and per-request seeds, so a
branch's tokens never depend on which other branches share its decode steps: what a
search gets under any interleaving must equal what it gets alone.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from fakes import EOS, tiny_engine, tiny_hf_model

from ttc.engine.native.kv_cache import KVCacheFull
from ttc.stopping import Force, ForceAfter, Stop, WindowConfidence
from ttc.types import ExpandRequest, FinishReason, SamplingParams

PROMPTS = [list(b"Question: what is 3 + 5? Answer:"), list(b"Q: name a prime above 10. A:"),
           list(b"Compute 12 * 7 step by step."), list(b"Say hello.")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=5)


def make_engine(tiny, **kw):
    kw.setdefault("kv_memory_gb", 0.004)
    return tiny_engine(tiny, **kw)


def submit_together(eng, calls):
    """Submit several calls so that they reach the engine in the same step (however slow
    this thread is scheduled): the engine's lock is held, so no step runs in between."""
    with eng._lock:
        return [eng.submit(requests) for requests in calls]


def token_bytes(tiny) -> int:
    cfg, _ = tiny
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (64 // 4) * 4


def search(eng, prompt, seed, *, rng=None, steps=3):
    """A small synchronous search: expand, keep the best-logprob branch, repeat."""
    root = eng.handle_for_tokens(prompt)
    trace, prefix = [], root
    for step in range(steps):
        if rng is not None:
            time.sleep(rng.random() * 0.003)
        params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=6 + step, seed=seed * 100 + step,
                                stop=(" ",))
        out = eng.expand([ExpandRequest(prefix=prefix, n=3, params=params)])
        conts = out.continuations[0]
        trace.append([c.token_ids for c in conts])
        best = max(conts, key=lambda c: sum(c.logprobs))
        eng.release([c.handle for c in conts if c is not best])
        if prefix is not root:
            eng.release([prefix])
        prefix = best.handle
        if best.ended:
            break
    eng.release([prefix, root] if prefix is not root else [root])
    return trace


def test_concurrent_searches_get_exactly_their_solo_tokens(tiny):
    jobs = [(PROMPTS[i % len(PROMPTS)], i) for i in range(6)]
    solo = [search(make_engine(tiny), p, s) for p, s in jobs]
    for trial in range(2):
        eng = make_engine(tiny)
        results: dict[int, list] = {}

        def run(i, p, s, trial=trial):
            results[i] = search(eng, p, s, rng=random.Random(trial * 31 + i))

        threads = [threading.Thread(target=run, args=(i, p, s)) for i, (p, s) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [results[i] for i in range(len(jobs))] == solo
        eng.check_invariants()
        assert eng.pool.num_used == 0, "every handle was released: no page may stay used"


def test_concurrent_jobs_share_decode_steps(tiny):
    eng = make_engine(tiny)
    p = SamplingParams(temperature=0.0, max_tokens=10)
    handles = [eng.handle_for_tokens(pr) for pr in PROMPTS]
    jobs = submit_together(eng, [[ExpandRequest(prefix=h, n=2, params=p)] for h in handles])
    outs = [j.result() for j in jobs]
    assert all(c.num_tokens == 10 for o in outs for c in o.continuations[0])
    # all four calls decoded in one batch (8 branches per step): 10 steps, not 4 x 10
    assert eng.stats()["peak_batch"] == 8
    assert eng.stats()["steps"] <= 11
    alone = make_engine(tiny)
    for pr in PROMPTS:
        alone.expand([ExpandRequest(prefix=alone.handle_for_tokens(pr), n=2, params=p)])
    assert alone.stats()["steps"] >= 40


def test_per_request_caps_are_exact_while_batched(tiny):
    eng = make_engine(tiny)
    p = SamplingParams(temperature=1.0, max_tokens=40, seed=3)
    hs = [eng.handle_for_tokens(pr) for pr in PROMPTS[:3]]
    capped = eng.submit([ExpandRequest(prefix=hs[0], n=4, params=p)], token_limit=22)
    free = eng.submit([ExpandRequest(prefix=hs[1], n=2, params=p)])
    tight = eng.submit([ExpandRequest(prefix=hs[2], n=3, params=p)], token_limit=7)
    a, b, c = capped.result(), free.result(), tight.result()
    assert a.usage.generated_tokens == 20 and all(
        x.finish is FinishReason.BUDGET for x in a.continuations[0])
    assert c.usage.generated_tokens == 6
    assert b.usage.generated_tokens == sum(x.num_tokens for x in b.continuations[0])
    assert all(x.finish is not FinishReason.BUDGET for x in b.continuations[0])
    # the same capped call alone gives the same tokens
    solo = make_engine(tiny)
    alone = solo.expand([ExpandRequest(prefix=solo.handle_for_tokens(PROMPTS[0]), n=4, params=p)],
                        token_limit=22)
    assert [x.token_ids for x in alone.continuations[0]] == [x.token_ids for x in a.continuations[0]]


class StopAt:
    """Test rule: stop at the token with index ``at`` (0-based), recording what it saw."""

    def __init__(self, at, top_k=5):
        self.at, self.top_k = at, top_k

    def __hash__(self):
        return hash((self.at, self.top_k))

    def start(self):
        spec = self

        class State:
            seen = 0
            tops = []

            def on_token(self, token, logprob, top, *, forced):
                self.tops.append(top)
                self.seen += 1
                return Stop("test") if self.seen == spec.at + 1 else None

            def summary(self):
                return {"seen": float(self.seen)}
        return State()


def test_a_stop_rule_stops_its_branch_at_the_right_token_and_others_go_on(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[0])
    ruled = SamplingParams(temperature=0.0, max_tokens=20, stop_rules=(StopAt(4),),
                           top_logprobs=3)
    plain = SamplingParams(temperature=0.0, max_tokens=20)
    out = eng.expand([ExpandRequest(prefix=h, n=1, params=ruled),
                      ExpandRequest(prefix=h, n=1, params=plain)])
    stopped, other = out.continuations[0][0], out.continuations[1][0]
    assert stopped.finish is FinishReason.RULE and stopped.stop_reason == "rule:test"
    assert stopped.num_tokens == 5 and stopped.stats == {"seen": 5.0}
    assert other.num_tokens == 20 and other.token_ids[:5] == stopped.token_ids
    # top log-probs: k=3 per token, sorted, and the greedy token is the first of them
    assert len(stopped.top_logprobs) == 5
    for tok, lp, top in zip(stopped.token_ids, stopped.logprobs, stopped.top_logprobs):
        assert len(top) == 3 and top[0][0] == tok
        assert top[0][1] == pytest.approx(lp, abs=1e-4)
        assert top[0][1] >= top[1][1] >= top[2][1]
    # the rule fired inside the batch: the engine fed 20 tokens for the other branch in
    # 20 steps, not 25 (a rule applied after the call would need the ruled branch to run on)
    eng.check_invariants()


def test_window_confidence_rule_checks_every_token():
    spec = WindowConfidence(window=3, threshold=5.0, top_k=2)
    st = spec.start()
    confident = [(1, -0.01), (2, -12.0)]       # confidence 6.005
    unsure = [(1, -0.7), (2, -0.8)]           # confidence 0.75
    assert st.on_token(1, -0.01, confident, forced=False) is None
    assert st.on_token(1, -0.01, confident, forced=False) is None
    assert st.on_token(1, -0.01, confident, forced=False) is None      # window mean 6.0
    action = st.on_token(1, -0.7, unsure, forced=False)               # (6+6+0.75)/3 = 4.25
    assert isinstance(action, Stop)
    assert st.summary()["min_window_confidence"] == pytest.approx(4.253, abs=1e-3)
    with pytest.raises(ValueError, match="window"):
        WindowConfidence(window=0)
    with pytest.raises(ValueError, match="top_k"):
        WindowConfidence(top_k=21)


def test_force_after_appends_tokens_without_sampling(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[1])
    p = SamplingParams(temperature=0.0, max_tokens=12, stop_rules=(ForceAfter(after=3, text="</t>"),))
    c = eng.expand([ExpandRequest(prefix=h, n=1, params=p)]).continuations[0][0]
    assert bytes(c.token_ids[3:7]) == b"</t>"
    assert c.stats["forced_tokens"] == 4.0
    assert c.num_tokens == 12
    # continuing greedily from the forced text equals what the engine did after it
    h2 = eng.handle_for_tokens(PROMPTS[1] + list(c.token_ids[:7]))
    rest = eng.expand([ExpandRequest(prefix=h2, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=5))]).continuations[0][0]
    assert rest.token_ids == c.token_ids[7:]
    assert isinstance(Force("x"), Force)


def test_token_stream_matches_the_result(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[2])
    p = SamplingParams(temperature=0.9, max_tokens=15, seed=11)
    events = []
    items = list(eng.stream([ExpandRequest(prefix=h, n=2, params=p)]))
    out = items[-1]
    events = items[:-1]
    for b, cont in enumerate(out.continuations[0]):
        mine = [ev for i, ev in events if ev.branch == b]
        assert [ev.token_id for ev in mine] == list(cont.token_ids)
        assert mine[-1].finish is cont.finish
        assert "".join(ev.text for ev in mine) == cont.text


def test_probe_runs_on_shared_kv_and_leaves_the_pages_as_it_found_them(tiny):
    from ttc.protocols import SupportsExtend, SupportsProbe

    eng = make_engine(tiny)
    assert isinstance(eng, SupportsProbe) and isinstance(eng, SupportsExtend)
    h = eng.handle_for_tokens(PROMPTS[0])
    c = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=9))]).continuations[0][0]
    used = eng.pool.num_used
    suffix = list(b" so the answer is")
    out = eng.probe(c.handle, suffix, max_new=6)
    assert eng.pool.num_used == used
    probe = out.continuations[0][0]
    assert probe.handle is None and probe.num_tokens == 6
    assert out.usage.prefill_tokens == len(suffix)      # only the suffix ran
    # same tokens as a fresh run over the whole text
    ref = make_engine(tiny)
    hh = ref.handle_for_tokens(PROMPTS[0] + list(c.token_ids) + suffix)
    want = ref.expand([ExpandRequest(prefix=hh, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=6))]).continuations[0][0]
    assert probe.token_ids == want.token_ids
    eng.check_invariants()


def test_truncate_names_a_prefix(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[0])
    c = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=9))]).continuations[0][0]
    t = eng.truncate(c.handle, len(PROMPTS[0]) + 4)
    assert eng.token_ids(t) == PROMPTS[0] + list(c.token_ids[:4])
    again = eng.expand([ExpandRequest(prefix=t, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=5))]).continuations[0][0]
    assert again.token_ids == c.token_ids[4:9]
    with pytest.raises(ValueError, match="truncate position"):
        eng.truncate(c.handle, 0)


def test_preemption_under_pressure_recomputes_and_keeps_results(tiny):
    p = SamplingParams(temperature=1.0, max_tokens=30, seed=5)
    ref = make_engine(tiny)
    want = [[c.token_ids for c in ref.expand([ExpandRequest(
        prefix=ref.handle_for_tokens(pr), n=2, params=p)]).continuations[0]] for pr in PROMPTS]
    # prompts take 14 pages; each call's 2 branches ~10 more: one call fits in 32 pages
    # at a time, four submitted together do not
    eng = make_engine(tiny, kv_memory_gb=32 * 8 * token_bytes(tiny) / 2**30)
    handles = [eng.handle_for_tokens(pr) for pr in PROMPTS]
    got: list = [None] * len(PROMPTS)

    released = threading.Semaphore(0)

    def keep_and_release(i):
        def done(fut):
            conts = fut.result().continuations[0]
            got[i] = [c.token_ids for c in conts]
            eng.release([c.handle for c in conts])      # on the engine's thread: reentrant
            released.release()
        return done
    jobs = submit_together(eng, [[ExpandRequest(prefix=h, n=2, params=p)] for h in handles])
    for i, j in enumerate(jobs):
        j.future.add_done_callback(keep_and_release(i))
    for _ in jobs:      # a callback runs after result() wakes its waiter: wait for them all
        assert released.acquire(timeout=120)
    assert got == want
    assert eng.stats()["preemptions"] > 0
    eng.check_invariants()


def test_a_call_that_cannot_fit_even_alone_fails_clearly_and_others_finish(tiny):
    eng = make_engine(tiny, kv_memory_gb=20 * 8 * token_bytes(tiny) / 2**30)
    small = eng.handle_for_tokens(PROMPTS[3])
    big = eng.handle_for_tokens(PROMPTS[0])
    ok = eng.submit([ExpandRequest(prefix=small, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=6))])
    bad = eng.submit([ExpandRequest(prefix=big, n=8, params=SamplingParams(
        temperature=0.0, max_tokens=64))])
    assert ok.result().continuations[0][0].num_tokens == 6
    with pytest.raises(KVCacheFull, match="backend.kv_memory_gb"):
        bad.result()
    eng.release([ok.result().continuations[0][0].handle])
    eng.check_invariants()


def test_over_long_request_fails_alone_while_the_batch_goes_on(tiny):
    eng = make_engine(tiny, kv_memory_gb=0.004)
    h = eng.handle_for_tokens(PROMPTS[0])
    near = eng.handle_for_tokens([65 + i % 26 for i in range(511)])     # context is 512
    running = eng.submit([ExpandRequest(prefix=h, n=2, params=SamplingParams(
        temperature=0.0, max_tokens=12))])
    with pytest.raises(ValueError, match="context"):
        eng.handle_for_tokens([65] * 600)
    full = eng.expand([ExpandRequest(prefix=near, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=50))]).continuations[0][0]
    assert full.finish is FinishReason.MAX_TOKENS and full.num_tokens == 1
    with pytest.raises(ValueError, match="context"):
        eng.submit([ExpandRequest(prefix=full.handle, n=1, params=SamplingParams())])
    out = running.result()
    assert all(c.num_tokens == 12 for c in out.continuations[0])


def test_cancelled_and_failing_callers_free_their_kv(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[0])
    eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(temperature=0, max_tokens=1))])
    base = eng.pool.num_used
    # 1. cancel mid-flight
    job = eng.submit([ExpandRequest(prefix=h, n=4, params=SamplingParams(
        temperature=1.0, max_tokens=200, seed=1))])
    while eng.stats()["steps"] < 3:
        time.sleep(0.001)
    job.cancel()
    with pytest.raises(Exception, match="cancelled"):
        job.result()
    # 2. a stream closed early
    it = eng.stream([ExpandRequest(prefix=h, n=2, params=SamplingParams(
        temperature=1.0, max_tokens=200, seed=2))])
    next(it)
    it.close()
    # 3. a callback that raises fails its own call only
    def boom(ev):
        raise RuntimeError("client went away")
    other = eng.submit([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=8))])
    with pytest.raises(RuntimeError, match="client went away"):
        eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(max_tokens=8),
                                  on_token=boom)])
    eng.release([c.handle for c in other.result().continuations[0]])
    # 4. asyncio: cancelling the task cancels the job
    async def cancel_soon():
        task = asyncio.ensure_future(eng.aexpand([ExpandRequest(
            prefix=h, n=2, params=SamplingParams(temperature=1.0, max_tokens=300, seed=3))]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(cancel_soon())
    deadline = time.time() + 10
    while eng.stats()["running"] and time.time() < deadline:
        time.sleep(0.01)
    eng.check_invariants()
    assert eng.pool.num_used == base


def test_aexpand_matches_expand(tiny):
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[2])
    p = SamplingParams(temperature=0.8, max_tokens=10, seed=4)

    async def both():
        return await asyncio.gather(*[eng.aexpand([ExpandRequest(prefix=h, n=2, params=p)])
                                      for _ in range(3)])
    outs = asyncio.run(both())
    assert len({tuple(c.token_ids for c in o.continuations[0]) for o in outs}) == 1


def test_sixteen_threads_hammering_one_engine(tiny):
    eng = make_engine(tiny, kv_memory_gb=48 * 8 * token_bytes(tiny) / 2**30)
    stop_at = time.time() + 6.0
    errors: list[BaseException] = []
    counts = [0] * 16

    def worker(k):
        rng = random.Random(k)
        try:
            while time.time() < stop_at:
                pr = PROMPTS[rng.randrange(len(PROMPTS))]
                h = eng.handle_for_tokens(pr)
                kind = rng.random()
                try:
                    if kind < 0.5:
                        out = eng.expand([ExpandRequest(prefix=h, n=rng.randint(1, 3),
                                                        params=SamplingParams(
                                                            temperature=1.0, seed=k,
                                                            max_tokens=rng.randint(1, 12)))],
                                         token_limit=rng.choice([None, 5, 20]))
                        hs = [c.handle for c in out.continuations[0]]
                        if rng.random() < 0.5:
                            eng.unpin(hs[:1], value=rng.random())
                        eng.release(hs)
                    elif kind < 0.7:
                        eng.probe(h, [65, 66], max_new=3)
                    elif kind < 0.85:
                        job = eng.submit([ExpandRequest(prefix=h, n=2, params=SamplingParams(
                            temperature=1.0, seed=k, max_tokens=40))])
                        time.sleep(rng.random() * 0.01)
                        job.cancel()
                    else:
                        hidden, hh = eng.extend(h, [67, 68, 69])
                        assert hidden.shape[0] == 3
                        eng.release([hh])
                except KVCacheFull:
                    pass                    # a tight pool may refuse a call: never wedge
                finally:
                    eng.release([h])
                counts[k] += 1
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock: a worker never returned"
    assert not errors, errors[:3]
    assert min(counts) > 0
    deadline = time.time() + 10
    while eng.stats()["running"] and time.time() < deadline:
        time.sleep(0.01)
    eng.check_invariants()
    assert eng.pool.num_used == eng.tree.cached_pages() == 0 or eng.pool.num_used == 0


def test_eos_rule_precedence_and_bad_rules(tiny):
    with pytest.raises(ValueError, match="stop_rules"):
        SamplingParams(stop_rules=("not a rule",))
    with pytest.raises(ValueError):
        SamplingParams(top_logprobs=21)
    assert EOS == 257


def test_preemption_spares_the_branches_the_search_values_most(tiny):
    """Two calls that cannot both fit: the one whose prefix the search pinned with the
    higher value runs through; the other is preempted (and still ends with its tokens)."""
    p = SamplingParams(temperature=1.0, max_tokens=30, seed=5)
    eng = make_engine(tiny, kv_memory_gb=24 * 8 * token_bytes(tiny) / 2**30)
    low, high = eng.handle_for_tokens(PROMPTS[1]), eng.handle_for_tokens(PROMPTS[2])
    eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(temperature=0, max_tokens=1))
                for h in (low, high)])              # compute both prompts first
    eng.pin([low], value=0.1)
    eng.pin([high], value=0.9)
    order = []
    jobs = submit_together(eng, [[ExpandRequest(prefix=h, n=2, params=p)] for h in (low, high)])
    for name, j in zip(("low", "high"), jobs):
        j.future.add_done_callback(lambda f, name=name: (order.append(name), eng.release(
            [c.handle for c in f.result().continuations[0]])))
    for j in jobs:
        j.result()
    assert eng.stats()["preemptions"] > 0
    assert order == ["high", "low"]      # submitted second, finished first: it was spared


def test_cancel_after_the_job_finished_releases_its_output(tiny):
    """A caller that gives up (e.g. its client disconnected) may cancel just after the job
    finished; the handles it would have received must not leak."""
    eng = make_engine(tiny)
    h = eng.handle_for_tokens(PROMPTS[0])
    eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(temperature=0, max_tokens=1))])
    base = (eng.pool.num_used, len(eng._handles))
    job = eng.submit([ExpandRequest(prefix=h, n=3, params=SamplingParams(
        temperature=1.0, max_tokens=10, seed=4))])
    job.future.result()                      # finished, but the caller never takes it
    job.cancel()
    job.cancel()                             # idempotent
    assert (eng.pool.num_used, len(eng._handles)) == base
    eng.check_invariants()
