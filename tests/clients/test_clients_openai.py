"""The ``openai`` SDK against ``ttc serve``: chat, streaming with progress, n, model
retrieval, raw completions with log-probs and echo, per-request sampling, stop strings,
the completion's length, a client's system prompt and whole conversation."""

from __future__ import annotations

import httpx
import openai
import pytest

from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)


def root(server) -> str:
    return server.url.removesuffix("/v1")


ASK = [{"role": "user", "content": "What is 6 * 7?"}]


def test_chat_runs_the_strategy(sim):
    r = client(sim).chat.completions.create(model="best_of_n-4", messages=ASK, seed=3)
    assert r.object == "chat.completion" and len(r.choices) == 1
    assert "\\boxed{" in r.choices[0].message.content
    extra = r.model_extra["ttc"]
    assert extra["strategy"] == "best_of_n" and len(extra["candidate_answers"]) == 4
    assert r.usage.completion_tokens == extra["ledger"]["generated_tokens"] > 0


def test_stream_sends_progress_then_the_answer_and_usage(sim):
    chunks = list(client(sim).chat.completions.create(
        model="beam-4", messages=ASK, seed=5, stream=True,
        stream_options={"include_usage": True}))
    events = [ch.model_extra["ttc"] for ch in chunks if ch.model_extra.get("ttc")]
    progress = [e for e in events if e["event"] in ("expand", "progress")]
    assert progress and all(p["search"] == 0 for p in progress)
    tokens = [p["tokens_so_far"] for p in progress if p["event"] == "expand"]
    assert tokens == sorted(tokens) and tokens[-1] > 0           # tokens so far grow
    assert all(not ch.choices for ch in chunks if ch.model_extra.get("ttc", {}).get(
        "event") in ("expand", "progress"))                       # clients skip them
    result = next(e for e in events if e["event"] == "result")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and f"\\boxed{{{result['answer']}}}" in text
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1])
    assert chunks[-1].usage.completion_tokens == result["ledger"]["generated_tokens"]
    assert tokens[-1] == result["ledger"]["generated_tokens"]
    last = [p for p in progress if p["event"] == "expand"][-1]
    assert last["answers_seen"] > 0 and last["leader_answer"] is not None


def test_stream_shows_the_tree_growing(sim):
    """Tree events (node added, scored, pruned, chosen) stream with their node, so a client
    can redraw the search tree live; the chosen leaf is a streamed node."""
    chunks = list(client(sim).chat.completions.create(
        model="beam-4", messages=ASK, seed=5, stream=True))
    events = [ch.model_extra["ttc"] for ch in chunks
              if ch.model_extra.get("ttc", {}).get("event") == "progress"]
    kinds = {e["kind"] for e in events}
    assert {"step", "node_added", "node_scored", "node_pruned", "chosen"} <= kinds
    nodes: dict[int, dict] = {}
    for e in events:
        if e["kind"] == "node_added":
            node = e["node"]
            assert node["id"] not in nodes and (node["parent"] in nodes or node["parent"] == 0)
            nodes[node["id"]] = node
        elif e["kind"] in ("node_scored", "node_pruned"):
            assert e["node"]["id"] in nodes
            nodes[e["node"]["id"]] = e["node"]
    (chosen,) = [e for e in events if e["kind"] == "chosen"]
    assert chosen["node"]["id"] in nodes and chosen["node"]["status"] == "terminal"
    assert chosen["budget_exhausted"] is False
    result = next(ch.model_extra["ttc"] for ch in chunks
                  if ch.model_extra.get("ttc", {}).get("event") == "result")
    assert chosen["node"]["answer"] == result["answer"]


def test_n_runs_independent_searches(sim):
    r = client(sim).chat.completions.create(model="best_of_n-2", messages=ASK, n=3, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    searches = r.model_extra["ttc"]["searches"]
    assert len(searches) == 3
    assert r.usage.completion_tokens == sum(s["ledger"]["generated_tokens"] for s in searches)
    stream = list(client(sim).chat.completions.create(model="best_of_n-2", messages=ASK, n=3,
                                                      seed=1, stream=True))
    assert {ch.choices[0].index for ch in stream if ch.choices} == {0, 1, 2}


def test_models_retrieve_and_unknown_model(sim):
    c = client(sim)
    assert c.models.retrieve("beam-8@4096").id == "beam-8@4096"
    assert c.models.retrieve("raw").id == "raw"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_unhonoured_parameters_are_a_400_naming_them(sim):
    c = client(sim)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="beam", messages=ASK,
                                  response_format={"type": "json_object"})
    assert "response_format" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="beam", messages=ASK, logit_bias={"5": 2})
    assert "logit_bias" in str(err.value)


def test_raw_completion_logprobs_are_token_text_with_tops_and_offsets(tiny):
    r = client(tiny).completions.create(model="raw", prompt="The answer is", max_tokens=5,
                                       temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(val, abs=1e-4)  # greedy


def test_raw_echo_scores_the_prompt_tokens(tiny):
    """What a harness's loglikelihood needs: the prompt's own token log-probs."""
    c = client(tiny)
    r = c.completions.create(model="raw", prompt=["The answer is 42", "Then we add"],
                             max_tokens=1, temperature=0, logprobs=1, echo=True)
    assert [ch.index for ch in r.choices] == [0, 1]
    first = r.choices[0]
    assert first.text.startswith("The answer is 42")
    ids = httpx.post(root(tiny) + "/tokenize", json={"prompt": "The answer is 42"}).json()
    n = ids["count"]
    lp = first.logprobs
    assert len(lp.tokens) == n + 1 and lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    # the same prompt as token ids gives the same log-probs
    again = c.completions.create(model="raw", prompt=ids["tokens"], max_tokens=1,
                                 temperature=0, logprobs=1, echo=True)
    assert again.choices[0].logprobs.token_logprobs[1:n] == pytest.approx(
        lp.token_logprobs[1:n], abs=1e-4)


def test_raw_is_not_templated_and_streams_tokens(tiny):
    c = client(tiny)
    r = c.completions.create(model="raw", prompt="Then we add", max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == httpx.post(
        root(tiny) + "/tokenize", json={"prompt": "Then we add"}).json()["count"]
    parts = list(c.completions.create(model="raw", prompt="Then we add", max_tokens=8,
                                      temperature=0, stream=True))
    assert len([p for p in parts if p.choices and p.choices[0].text]) > 1
    assert "".join(p.choices[0].text for p in parts if p.choices) == r.choices[0].text


def test_a_client_system_prompt_and_whole_conversation_reach_the_model(tiny):
    """Before: only the last user message was used, under ttc's own system prompt."""
    messages = [{"role": "system", "content": "Answer with #### and the number."},
                {"role": "user", "content": "What is 1 + 1?"},
                {"role": "assistant", "content": "#### 2"},
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}]
    tok = httpx.post(root(tiny) + "/tokenize", json={"messages": messages}).json()
    text = httpx.post(root(tiny) + "/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert "#### 2" in text and "What is 1 + 1?" in text and "Be brief." in text
    assert DEFAULT_SYSTEM_PROMPT not in text
    r = client(tiny).chat.completions.create(model="self_consistency-2", messages=messages,
                                             max_tokens=4, temperature=0,
                                             extra_body={"ttc": {"budget": 64}})
    assert r.usage.prompt_tokens == tok["count"]       # the prompt is the whole conversation
    plain = client(tiny).chat.completions.create(
        model="self_consistency-2", messages=messages[-1:], max_tokens=4, temperature=0,
        extra_body={"ttc": {"budget": 64}})
    assert plain.usage.prompt_tokens > len(messages[-1]["content"][0]["text"]) // 4
    assert DEFAULT_SYSTEM_PROMPT not in text


def test_sampling_stop_and_length_apply_to_the_search(tiny):
    c = client(tiny)
    kw = dict(model="self_consistency-2", messages=ASK, temperature=0,
              extra_body={"ttc": {"budget": 120}})
    a = c.chat.completions.create(**kw, max_tokens=30)
    b = c.chat.completions.create(**kw, max_tokens=30)
    assert a.choices[0].message.content == b.choices[0].message.content   # greedy: same
    full = a.choices[0].message.content
    assert httpx.post(root(tiny) + "/tokenize", json={"prompt": full}).json()["count"] <= 30
    short = c.chat.completions.create(**kw, max_tokens=3)
    assert httpx.post(root(tiny) + "/tokenize", json={
        "prompt": short.choices[0].message.content}).json()["count"] <= 3
    assert short.choices[0].finish_reason == "length"
    # a stop string taken from the greedy text ends every branch there
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = c.chat.completions.create(**kw, max_tokens=30, stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < a.usage.completion_tokens   # branches stopped early
    hot = [c.chat.completions.create(**{**kw, "temperature": 1.5}, max_tokens=30, seed=s)
           .choices[0].message.content for s in (1, 2)]
    assert hot[0] != hot[1] or hot[0] != full                        # temperature is applied


def test_tokenizer_endpoints_metrics_and_request_id(tiny):
    info = httpx.get(root(tiny) + "/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["chat_template"]
    r = httpx.get(root(tiny) + "/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    client(tiny).completions.create(model="raw", prompt="Then", max_tokens=2)
    text = httpx.get(root(tiny) + "/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["ttc_requests_total"] >= 1 and values["ttc_generation_tokens_total"] >= 2
    assert 0 <= values["ttc_kv_usage_ratio"] <= 1 and values["ttc_kv_pages_total"] > 0
    assert values["ttc_queue_prefills_waiting"] == 0 == values["ttc_queue_branches_preempted"]
    assert values["ttc_requests_running"] == 1          # this /metrics request
