"""The vLLM backend on a tiny random Llama (own CI stage: scripts/ci_vllm.sh).

Checks greedy tokens against transformers and the native engine, seeds, logprobs, stop
strings, the ledger's cached/prefilled split from vLLM's prefix cache, token limits, and
one strategy giving the same greedy result on the native and vLLM backends; concurrent
expand calls from many threads running in one vLLM batch (with the results they get
alone), aborts and refusals that touch only their own caller; then the HTTP backend
against vLLM's own OpenAI server.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from fakes import save_tiny_llama  # noqa: E402  (after the importorskip)

from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams  # noqa: E402

for _key, _value in (("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"), ("VLLM_CPU_OMP_THREADS_BIND", "0-1"),
                     ("OMP_NUM_THREADS", "2")):
    os.environ.setdefault(_key, _value)

QUESTION = "What is 3 + 5?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def gen(model_dir):
    from ttc.engine.backends.vllm import VLLMBackendConfig, VLLMGenerator

    g = VLLMGenerator.from_config(VLLMBackendConfig(model=str(model_dir), dtype="float32",
                                                    gpu_memory_utilization=0.2))
    yield g
    del g


@pytest.fixture(scope="module")
def native(model_dir):
    from ttc.engine.native.engine import NativeGenerator
    from ttc.engine.native.config import NativeBackendConfig

    return NativeGenerator.from_config(NativeBackendConfig(model=str(model_dir), dtype="float32",
                                                           device="cpu", kv_memory_gb=0.1))


@pytest.fixture(scope="module")
def hfgen(model_dir):
    from ttc.registry import BACKENDS

    return BACKENDS.build({"name": "hf", "model": str(model_dir), "dtype": "float32",
                           "device": "cpu"})


def _greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=stop)


def test_greedy_tokens_match_transformers_native_and_hf(gen, native, hfgen, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    root = gen.root(Problem(question=QUESTION))
    prompt = gen.token_ids(root)
    out = gen.expand([ExpandRequest(prefix=root, n=1, params=_greedy(24))])
    cont = out.continuations[0][0]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                      eos_token_id=None, pad_token_id=2)[0, len(prompt):].tolist()
    n = len(cont.token_ids)
    assert n > 0 and list(cont.token_ids) == ref[:n]
    nroot = native.root(Problem(question=QUESTION))
    assert native.token_ids(nroot) == prompt
    nout = native.expand([ExpandRequest(prefix=nroot, n=1, params=_greedy(24))])
    assert nout.continuations[0][0].token_ids == cont.token_ids
    hroot = hfgen.root(Problem(question=QUESTION))
    hout = hfgen.expand([ExpandRequest(prefix=hroot, n=1, params=_greedy(24))])
    assert hout.continuations[0][0].token_ids == cont.token_ids
    # logprobs of greedy tokens: one per token, the model's log-softmax at that token.
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + list(cont.token_ids)])).logits[0]
    lsm = torch.log_softmax(logits[len(prompt) - 1:-1].float(), dim=-1)
    want = [lsm[i, t].item() for i, t in enumerate(cont.token_ids)]
    assert len(cont.logprobs) == n
    assert max(abs(a - b) for a, b in zip(cont.logprobs, want)) < 1e-3
    gen.release([root, cont.handle])


def test_stop_strings_end_steps_and_are_kept(gen):
    tok = gen.tokenizer
    root = gen.root(Problem(question=QUESTION))
    free = gen.expand([ExpandRequest(prefix=root, n=1, params=_greedy(30))])
    text = free.continuations[0][0].text
    stop = text[5:7] if len(text) >= 7 else text[-1]
    out = gen.expand([ExpandRequest(prefix=root, n=1, params=_greedy(30, (stop,)))])
    c = out.continuations[0][0]
    assert c.finish is FinishReason.STOP
    assert stop in c.text and len(c.text) <= text.index(stop) + len(stop) + 8
    assert tok.decode(list(c.token_ids), skip_special_tokens=True) == c.text
    gen.release([root, c.handle, free.continuations[0][0].handle])


def test_seeds_reproduce_and_differ_across_samples(gen):
    root = gen.root(Problem(question=QUESTION))
    p = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    a = gen.expand([ExpandRequest(prefix=root, n=3, params=p)]).continuations[0]
    b = gen.expand([ExpandRequest(prefix=root, n=4, params=p)]).continuations[0]
    assert [c.token_ids for c in a] == [c.token_ids for c in b[:3]]  # extends, not reshuffles
    assert len({c.token_ids for c in b}) > 1
    gen.release([root] + [c.handle for c in a + b])


def test_ledger_splits_cached_and_prefilled_tokens(gen):
    root = gen.root(Problem(question="A fresh question for the prefix cache test?" * 3))
    plen = gen.token_count(root)
    first = gen.expand([ExpandRequest(prefix=root, n=1, params=_greedy(40))])
    assert first.usage.prefill_tokens + first.usage.cached_tokens == plen
    child = first.continuations[0][0]
    second = gen.expand([ExpandRequest(prefix=child.handle, n=1, params=_greedy(8))])
    total = plen + child.num_tokens
    assert second.usage.prefill_tokens + second.usage.cached_tokens == total
    assert second.usage.cached_tokens >= (plen // 32) * 32 - 32 > 0   # served by vLLM's cache
    assert second.usage.generated_tokens == second.continuations[0][0].num_tokens
    gen.release([root, child.handle, second.continuations[0][0].handle])


def test_token_limit_caps_the_call_and_marks_budget(gen):
    root = gen.root(Problem(question=QUESTION))
    p = SamplingParams(temperature=1.0, max_tokens=50, seed=3)
    out = gen.expand([ExpandRequest(prefix=root, n=4, params=p)], token_limit=30)
    conts = out.continuations[0]
    assert out.usage.generated_tokens == sum(c.num_tokens for c in conts) <= 30
    assert any(c.finish is FinishReason.BUDGET for c in conts)
    before = gen.kv_bytes()
    gen.release([c.handle for c in conts])
    assert gen.kv_bytes() < before
    gen.release([root])


def test_same_strategy_same_greedy_result_on_native_hf_and_vllm(gen, native, hfgen):
    from ttc.config import GenerationConfig
    from ttc.ledger import Budget
    from ttc.registry import STRATEGIES, VERIFIERS

    generation = GenerationConfig(temperature=0.0, max_step_tokens=8, max_tokens=32, max_steps=4,
                                  step_delimiter=" ")
    problem = Problem(question=QUESTION)
    results = []
    for g in (native, hfgen, gen):
        strategy = STRATEGIES.build({"name": "beam", "n": 2, "width": 1, "num_iterations": 3},
                                    generation=generation)
        verifier = VERIFIERS.build("simulated", generator=g)
        results.append(strategy.run(problem, generator=g, verifier=verifier,
                                    budget=Budget(max_generated_tokens=200)))
    steps = [[c.steps for c in r.candidates] for r in results]
    assert steps[0] and steps[0][0] and steps[0] == steps[1] == steps[2]
    assert len({r.ledger.generated_tokens for r in results}) == 1


def _expand_one(gen, question: str, params: SamplingParams, n: int) -> list[tuple[int, ...]]:
    root = gen.root(Problem(question=question))
    out = gen.expand([ExpandRequest(prefix=root, n=n, params=params)])
    conts = out.continuations[0]
    gen.release([root] + [c.handle for c in conts])
    return [c.token_ids for c in conts]


def test_concurrent_expands_join_one_running_batch_and_match_solo_results(gen, monkeypatch):
    k, tokens = 4, 16
    calls = [(f"Thread {i} asks: what is {i} + 5?",
              _greedy(tokens) if i % 2 == 0
              else SamplingParams(temperature=1.0, max_tokens=tokens, seed=100 + i),
              1 + i % 2) for i in range(k)]                  # 1 + 2 + 1 + 2 = 6 requests
    loop, engine = gen._loop, gen._loop.engine
    real_step, real_submit = engine.step, loop.submit
    unfinished: list[int] = []                  # vLLM's unfinished requests before each step

    def counting_step():
        unfinished.append(engine.get_num_unfinished_requests())
        return real_step()

    monkeypatch.setattr(engine, "step", counting_step)
    solo, solo_steps = [], 0
    for question, params, n in calls:
        unfinished.clear()
        solo.append(_expand_one(gen, question, params, n))
        solo_steps += len(unfinished)
    # Premise: no sequence ends early, so every request is still running at step 2.
    assert all(len(t) == tokens for ts in solo for t in ts)

    # The first step waits until all k callers have submitted: the others then join the
    # running batch at the next step. A generator that serialised callers never gets
    # there (one caller at a time waits in expand), and the gate gives up after 120 s.
    submitted = threading.Semaphore(0)
    all_in = threading.Event()

    def submit(items):
        ticket = real_submit(items)
        submitted.release()
        return ticket

    def gated_step():
        if not unfinished and all(submitted.acquire(timeout=120) for _ in range(k)):
            all_in.set()
        return counting_step()

    unfinished.clear()
    monkeypatch.setattr(loop, "submit", submit)
    monkeypatch.setattr(engine, "step", gated_step)
    with concurrent.futures.ThreadPoolExecutor(k) as pool:
        together = list(pool.map(lambda c: _expand_one(gen, *c), calls))
    assert all_in.is_set(), "the callers' requests never reached the engine together"
    assert together == solo                      # batching changes nothing a caller sees
    assert max(unfinished) == sum(n for _, _, n in calls)   # all six in vLLM at once
    assert len(unfinished) < solo_steps          # shared steps, not one caller after another


def test_a_caller_that_gives_up_has_its_requests_aborted(gen, monkeypatch):
    from ttc.engine.backends import vllm as backend

    class GaveUp(Exception):
        pass

    loop, engine = gen._loop, gen._loop.engine
    real_step, real_submit = engine.step, loop.submit
    tickets, stepped = [], threading.Event()

    def submit(items):
        tickets.append(real_submit(items))
        return tickets[-1]

    def step():
        out = real_step()
        stepped.set()
        return out

    def give_up(self):                 # the caller's wait ends in an exception mid-decode
        assert stepped.wait(timeout=120)
        raise GaveUp

    monkeypatch.setattr(loop, "submit", submit)
    monkeypatch.setattr(engine, "step", step)
    monkeypatch.setattr(backend._Ticket, "result", give_up)
    root = gen.root(Problem(question=QUESTION))
    long = SamplingParams(temperature=1.0, max_tokens=600, seed=1)
    with pytest.raises(GaveUp):
        gen.expand([ExpandRequest(prefix=root, n=2, params=long)])
    concurrent.futures.wait([tickets[0].future], timeout=120)
    assert tickets[0].future.cancelled()         # aborted, not run to its 600 tokens
    assert engine.get_num_unfinished_requests() == 0
    monkeypatch.undo()
    out = gen.expand([ExpandRequest(prefix=root, n=1, params=_greedy(4))])
    assert out.continuations[0][0].num_tokens > 0   # the loop still serves later callers
    gen.release([root, out.continuations[0][0].handle])


def test_a_refused_request_fails_only_its_caller(gen):
    from vllm.exceptions import VLLMValidationError

    params = _greedy(12)
    alone = _expand_one(gen, QUESTION, params, 1)
    too_long = "count with me " * 400                # > 1024 tokens: over max_model_len
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ok = pool.submit(_expand_one, gen, QUESTION, params, 1)
        bad = pool.submit(_expand_one, gen, too_long, params, 1)
        with pytest.raises(VLLMValidationError, match="maximum context length"):
            bad.result(timeout=300)
        assert ok.result(timeout=300) == alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_backend_against_vllm_openai_server(model_dir, gen):
    import httpx

    from ttc.engine.backends.http import HTTPBackendConfig, HTTPGenerator

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--block-size", "32",
           "--gpu-memory-utilization", "0.2", "--served-model-name", "tiny", "--dtype", "float32",
           "--enable-prefix-caching", "--enable-prompt-tokens-details"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the vLLM server exited during start-up"
            time.sleep(2)
        http = HTTPGenerator.from_config(HTTPBackendConfig(
            base_url=f"http://127.0.0.1:{port}/v1", model="tiny", tokenizer=str(model_dir)))
        root = http.root(Problem(question=QUESTION))
        out = http.expand([ExpandRequest(prefix=root, n=1, params=_greedy(20))])
        oroot = gen.root(Problem(question=QUESTION))
        off = gen.expand([ExpandRequest(prefix=oroot, n=1, params=_greedy(20))])
        assert out.continuations[0][0].token_ids == off.continuations[0][0].token_ids
        p = SamplingParams(temperature=1.0, max_tokens=10, seed=11)
        s1 = http.expand([ExpandRequest(prefix=root, n=3, params=p)]).continuations[0]
        s2 = gen.expand([ExpandRequest(prefix=oroot, n=3, params=p)]).continuations[0]
        assert [c.token_ids for c in s1] == [c.token_ids for c in s2]   # same seeds, same draws
        assert all(len(c.logprobs) == c.num_tokens for c in s1)
        child = out.continuations[0][0].handle
        more = http.expand([ExpandRequest(prefix=child, n=1, params=_greedy(5))])
        assert more.usage.cached_tokens > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_bench_direct_reference_replays_the_same_work_straight_on_vllm(gen):
    """ttc bench concurrency's vllm_direct figures: the recorded requests of concurrent
    searches, replayed on llm.generate one round per call index, generate the same tokens."""
    from ttc.engine.vllm_bench import phase_recorder, replay_direct

    def search(i: int) -> int:                   # two calls, the second continuing the first
        root = gen.root(Problem(question=f"Search {i}: what is {i} + 2?"))
        params = _greedy(6) if i % 2 == 0 else SamplingParams(temperature=1.0, max_tokens=6,
                                                              seed=40 + i)
        first = gen.expand([ExpandRequest(prefix=root, n=2, params=params)]).continuations[0]
        second = gen.expand([ExpandRequest(prefix=first[0].handle, n=1, params=params)])
        conts = list(first) + list(second.continuations[0])
        gen.release([root] + [c.handle for c in conts])
        return sum(c.num_tokens for c in conts)

    phases: dict = {}
    with phase_recorder(gen, phases)("probe", 3):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            generated = sum(pool.map(search, range(3)))
    assert "submit" not in vars(gen._loop)        # the recorder is gone after the phase
    (recorded,) = phases.values()
    assert sorted(len(calls) for calls in recorded) == [2, 2, 2]            # per search
    assert sorted(len(items) for calls in recorded for items in calls) == [1, 1, 1, 2, 2, 2]
    direct = replay_direct(gen.llm, recorded)
    assert direct["generate_calls"] == 2 and direct["generated"] == generated > 0
    out = _expand_one(gen, QUESTION, _greedy(4), 1)  # the generator still works afterwards
    assert len(out[0]) > 0
