"""Fakes for strategies that write their own prompts (threads, plan-and-budget, self-eval).

:class:`PromptGenerator` remembers the text of every prompt it was given (``root``) and
answers each request with ``reply(prompt, index, params) -> text`` (or ``(text,
finish)``, or ``(text, finish, logprob)`` with every token's log-probability); tokens
are the words of the text, cut at ``max_tokens`` (finish ``MAX_TOKENS``) and at the
call's ``token_limit`` (finish ``BUDGET``), as an engine would.
Continuing a handle continues its prompt: the reply sees the same prompt text.
:class:`StepVerifier` scores each step by a rule over its text.
"""

from __future__ import annotations

from typing import Callable

from ttc.types import (Continuation, ExpandOutput, FinishReason, GenerationUsage, Problem,
                       ScoreOutput, VerifierUsage)


class PromptGenerator:
    def __init__(self, reply: Callable, *, logprob: float = -0.1) -> None:
        self.reply = reply
        self.logprob = logprob
        self.prompts: dict[int, str] = {}
        self.live: set[int] = set()
        self.calls: list[list[tuple[str, int, float]]] = []   # (prompt, max_tokens, temp)
        self._next = 0

    def _new(self, prompt: str) -> int:
        self._next += 1
        self.prompts[self._next] = prompt
        self.live.add(self._next)
        return self._next

    def root(self, problem: Problem) -> int:
        return self._new(problem.question)

    def expand(self, requests, *, token_limit=None) -> ExpandOutput:
        self.calls.append([(self.prompts[r.prefix], r.params.max_tokens,
                            r.params.temperature) for r in requests])
        out, generated = [], 0
        left = token_limit
        for r in requests:
            if r.prefix not in self.live:
                raise ValueError(f"handle {r.prefix} is not live")
            conts = []
            for i in range(r.n):
                reply = self.reply(self.prompts[r.prefix], i, r.params)
                if not isinstance(reply, tuple):
                    reply = (reply, FinishReason.EOS)
                text, finish = reply[0], reply[1]
                logprob = reply[2] if len(reply) > 2 else self.logprob
                words = text.split(" ")
                if len(words) > r.params.max_tokens:
                    words, finish = words[: r.params.max_tokens], FinishReason.MAX_TOKENS
                if left is not None and len(words) > left:
                    words, finish = words[:left], FinishReason.BUDGET
                if left is not None:
                    left -= len(words)
                text = " ".join(words)
                generated += len(words)
                handle = self._new(self.prompts[r.prefix])
                conts.append(Continuation(handle=handle, token_ids=tuple(range(len(words))),
                                          text=text, logprobs=(logprob,) * len(words),
                                          finish=finish))
            out.append(tuple(conts))
        return ExpandOutput(continuations=tuple(out),
                            usage=GenerationUsage(generated_tokens=generated))

    def pin(self, handles, *, value=None) -> None:
        pass

    def release(self, handles) -> None:
        self.live.difference_update(handles)

    def kv_bytes(self) -> int:
        return len(self.live)

    def prompts_of_call(self, i: int) -> list[str]:
        return [p for p, _, _ in self.calls[i]]


class StepVerifier:
    """Scores a step ``good`` if ``rule(step)`` is true: 0.9 for good steps, 0.1 else."""

    incremental = False

    def __init__(self, rule: Callable[[str], bool]) -> None:
        self.rule = rule
        self.seen: list[list[str]] = []

    def score(self, problem: Problem, trajectories) -> ScoreOutput:
        out = []
        for steps in trajectories:
            self.seen.append(list(steps))
            out.append(tuple(0.9 if self.rule(s) else 0.1 for s in steps))
        return ScoreOutput(scores=tuple(out), usage=VerifierUsage(
            calls=len(trajectories), tokens=sum(len(" ".join(t).split()) for t in trajectories)))
