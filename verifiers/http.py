"""A verifier over HTTP, for a PRM or judge that runs on another machine.

Contract. ``mode="completions"``: an OpenAI-compatible ``POST {url}/v1/completions``
with ``max_tokens=1, logprobs=top_logprobs, temperature=0``; one prompt per scored step
(all steps of all trajectories in one request, ``prompt`` being a list). Step t's score
is ``P(pos) / (P(pos) + P(neg))`` from the first generated token's ``top_logprobs``
(labels ``pos_label``/``neg_label``); a label missing from the top list is given the
smallest listed logprob (an upper bound), and when both are missing the step scores 0.5.
Prompt formats (plain text; the server tokenizes):

* ``judge``: ``"Question:\\n{q}\\n\\nSolution so far:\\n{steps 1..t}\\n\\nIs the last step
  correct? Answer Yes or No.\\nAnswer:"``, labels `` Yes``/`` No``;
* ``math_shepherd``: ``"{q} {step 1} ки\\n...{step t} ки"``, labels ``+``/``-``.

``mode="reward"``: a reward/pooling endpoint such as vLLM's ``POST {url}/pooling`` with
``{"model", "input": [text, ...]}``, one text per trajectory in the Qwen2.5-Math-PRM chat
format (steps joined by ``<extra_0>``); each item's ``data`` holds one entry per step,
either ``[p_neg, p_pos]`` (score = p_pos) or a scalar probability.
Usage: ``calls`` = trajectories; ``tokens`` = the server's ``usage.prompt_tokens`` minus
``cached_tokens`` (``usage.prompt_tokens_details.cached_tokens``) when it reports them.
Network: ``timeout_s`` per request, up to ``max_retries`` retries with backoff on
connection errors and 5xx/429; any other failure raises :class:`VerifierHTTPError` naming
the URL and the server's answer. ``httpx`` is imported when the verifier is built.
Must NOT know: strategies, engines.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Sequence

from pydantic import Field

from ttc.registry import VERIFIERS
from ttc.types import Frozen, Problem, ScoreOutput, VerifierUsage

JUDGE_QUESTION = "Is the last step correct? Answer Yes or No."
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class VerifierHTTPError(RuntimeError):
    """The remote verifier could not be reached or answered something unusable."""


class HTTPVerifierConfig(Frozen):
    name: Literal["http"] = "http"
    url: str = "http://127.0.0.1:8000"
    model: str = "prm"
    mode: Literal["completions", "reward"] = "completions"
    prompt_format: Literal["judge", "math_shepherd"] = "judge"
    pos_label: str | None = None     # None: the format's own (" Yes" / "+")
    neg_label: str | None = None
    top_logprobs: int = Field(default=20, ge=2, le=20)
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    api_key: str | None = None


def judge_prompt(question: str, steps: Sequence[str]) -> str:
    return (f"Question:\n{question.strip()}\n\nSolution so far:\n{''.join(steps)}\n\n"
            f"{JUDGE_QUESTION}\nAnswer:")


def shepherd_prompt(question: str, steps: Sequence[str]) -> str:
    return f"{question.strip()} " + "\n".join(f"{s.strip()} ки" for s in steps)


def qwen_prm_text(question: str, steps: Sequence[str]) -> str:
    body = "<extra_0>".join(s.strip() for s in steps) + "<extra_0>"
    return (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{question}"
            f"<|im_end|>\n<|im_start|>assistant\n{body}<|im_end|>\n")


class HTTPVerifier:
    incremental = False

    def __init__(self, config: HTTPVerifierConfig) -> None:
        try:
            import httpx
        except ImportError as err:  # pragma: no cover - httpx is a dependency
            raise VerifierHTTPError("the http verifier needs httpx (pip install httpx).") from err
        self.config = config
        self._httpx = httpx
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(timeout=config.timeout_s, headers=headers)
        default = (" Yes", " No") if config.prompt_format == "judge" else ("+", "-")
        self.pos = config.pos_label if config.pos_label is not None else default[0]
        self.neg = config.neg_label if config.neg_label is not None else default[1]

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = self.config.url.rstrip("/") + path
        last = ""
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = self._client.post(url, json=payload)
            except self._httpx.HTTPError as err:     # connection refused, timeout...
                last = f"{type(err).__name__}: {err}"
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError as err:
                        raise VerifierHTTPError(f"verifier at {url} answered non-JSON: "
                                                f"{resp.text[:200]!r}.") from err
                last = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
                if resp.status_code < 500 and resp.status_code != 429:
                    break
            if attempt < self.config.max_retries:
                time.sleep(0.2 * 2 ** attempt)
        raise VerifierHTTPError(f"verifier at {url} failed after "
                                f"{self.config.max_retries + 1} attempt(s): {last}")

    @staticmethod
    def _usage(body: dict[str, Any], calls: int) -> VerifierUsage:
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return VerifierUsage(calls=calls, tokens=max(prompt - cached, 0), cached_tokens=cached)

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        from ttc.verifiers.prm_core import check_steps

        check_steps(trajectories)
        if not trajectories:
            return ScoreOutput(scores=(), usage=VerifierUsage())
        if self.config.mode == "reward":
            return self._score_reward(problem, trajectories)
        build = judge_prompt if self.config.prompt_format == "judge" else shepherd_prompt
        prompts = [build(problem.question, steps[: t + 1])
                   for steps in trajectories for t in range(len(steps))]
        body = self._post("/v1/completions", {
            "model": self.config.model, "prompt": prompts, "max_tokens": 1,
            "temperature": 0.0, "logprobs": self.config.top_logprobs})
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise VerifierHTTPError(f"verifier at {self.config.url} returned {len(choices)} "
                                    f"choices for {len(prompts)} prompts.")
        flat = [self._pair_prob(c) for c in choices]
        scores, k = [], 0
        for steps in trajectories:
            scores.append(tuple(flat[k: k + len(steps)]))
            k += len(steps)
        return ScoreOutput(scores=tuple(scores), usage=self._usage(body, len(trajectories)))

    def _pair_prob(self, choice: dict[str, Any]) -> float:
        lp = choice.get("logprobs") or {}
        tops = lp.get("top_logprobs") or []
        if not tops or not isinstance(tops[0], dict):
            raise VerifierHTTPError(f"verifier at {self.config.url} returned no top_logprobs; "
                                    f"it must support 'logprobs' on /v1/completions.")
        top = tops[0]
        floor = min(top.values())
        pos, neg = top.get(self.pos), top.get(self.neg)
        if pos is None and neg is None:
            return 0.5
        pos = floor if pos is None else pos
        neg = floor if neg is None else neg
        m = max(pos, neg)
        return math.exp(pos - m) / (math.exp(pos - m) + math.exp(neg - m))

    def _score_reward(self, problem: Problem, trajectories) -> ScoreOutput:
        texts = [qwen_prm_text(problem.question, steps) for steps in trajectories]
        body = self._post("/pooling", {"model": self.config.model, "input": texts})
        items = body.get("data") or []
        if len(items) != len(texts):
            raise VerifierHTTPError(f"verifier at {self.config.url} returned {len(items)} "
                                    f"results for {len(texts)} inputs.")
        scores = []
        for steps, item in zip(trajectories, items):
            rows = item.get("data") if isinstance(item, dict) else item
            if not isinstance(rows, list) or len(rows) != len(steps):
                raise VerifierHTTPError(f"verifier at {self.config.url} returned "
                                        f"{len(rows) if isinstance(rows, list) else rows!r} "
                                        f"step rewards for {len(steps)} steps.")
            scores.append(tuple(float(r[-1]) if isinstance(r, list) else float(r) for r in rows))
        return ScoreOutput(scores=tuple(scores), usage=self._usage(body, len(trajectories)))


@VERIFIERS.register(HTTPVerifierConfig)
def build_http(config: HTTPVerifierConfig, **_: object) -> HTTPVerifier:
    return HTTPVerifier(config)
