"""litellm and langchain-openai against ``ttc serve`` (simulated backend): invoke, stream,
batch, as their users call an OpenAI-compatible server."""

from __future__ import annotations

import litellm
from langchain_openai import ChatOpenAI

ASK = [{"role": "user", "content": "What is 6 * 7?"}]


def test_litellm_completion_stream_and_batch(sim):
    kw = dict(model="openai/best_of_n-4", api_base=sim.url, api_key="none")
    r = litellm.completion(messages=ASK, **kw)
    assert "\\boxed{" in r.choices[0].message.content
    assert r.usage.completion_tokens > 0
    parts = list(litellm.completion(messages=ASK, stream=True, **kw))
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert "\\boxed{" in text
    many = litellm.batch_completion(messages=[ASK, [{"role": "user", "content": "2 + 2?"}]],
                                    **kw)
    assert len(many) == 2 and all("\\boxed{" in m.choices[0].message.content for m in many)


def test_langchain_invoke_stream_and_batch(sim):
    llm = ChatOpenAI(model="beam-4", base_url=sim.url, api_key="none", max_retries=0,
                     timeout=120)
    msg = llm.invoke("What is 6 * 7?")
    assert "\\boxed{" in msg.content
    assert msg.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("What is 6 * 7?"))
    assert "\\boxed{" in "".join(c.content for c in chunks)
    out = llm.batch(["What is 1 + 2?", "What is 3 + 4?"])
    assert len(out) == 2 and all("\\boxed{" in m.content for m in out)
    system = llm.invoke([("system", "Answer with #### and the number."), ("human", "2 + 2?")])
    assert system.content
