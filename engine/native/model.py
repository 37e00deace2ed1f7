"""The native model runner: Llama-family and Qwen2/Qwen2.5/Qwen3 decoders over a paged KV cache.

Contract: :func:`from_hf` turns a transformers config plus an HF-named state dict into a
:class:`NativeModel` (weights fused: q/k/v into one matrix, gate/up into one). The model
computes; it does not decide: :meth:`NativeModel.forward` takes token ids, their
positions, the flat KV slot of each token (``page * page_size + offset``) and an
attention plan (:class:`~ttc.engine.native.attention.ExtendPlan` for prefill,
:class:`~ttc.engine.native.attention.DecodePlan` for one decode token per branch), writes the
tokens' keys and values into the cache and returns final-norm hidden states;
:meth:`NativeModel.logits` applies the LM head.

Covered: RMSNorm, SwiGLU MLP, GQA, RoPE (default, linear, dynamic-free scalings that
transformers computes once: llama3, yarn, longrope via ``ROPE_INIT_FUNCTIONS``), tied
embeddings, Qwen2 q/k/v biases (and Llama ``attention_bias``), Qwen3 ``q_norm``/``k_norm``.

Linear layers on CPU use oneDNN with the weights reordered once into its blocked layout
(:func:`pack_linear`) where :mod:`ttc.engine.hardware` says so: bf16 where this CPU's
oneDNN runs bf16, float32 on x86. Decode streams every weight once per step, and the
plain layout costs a reorder inside each call (bf16: ~25% slower for the 16-row decode of
SmolLM2-135M on AVX-512/AMX; float32 against plain ``F.linear``: 0.52x the time at 16
rows). Outputs agree with ``F.linear`` to rounding, not always bit for bit (the
accumulation order may differ). Elsewhere (CUDA, MPS, float16, a CPU without oneDNN bf16
for bf16, a torch without oneDNN) weights stay plain tensors and ``F.linear`` runs them.
Must NOT know: radix trees, handles, sampling, text, rewards, strategies.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ttc.engine.hardware import can_pack_linear
from ttc.engine.native.attention import (DecodePlan, ExtendPlan, decode_attention,
                                         extend_attention)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_NULL = contextlib.nullcontext()


def _no_label(name: str) -> contextlib.AbstractContextManager:
    return _NULL


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shape of a decoder, read once from a transformers config."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool


def model_config_from_hf(hf_config: Any) -> ModelConfig:
    """Read a :class:`ModelConfig` from a transformers ``PretrainedConfig``."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(SUPPORTED_MODEL_TYPES)} for the "
                         f"native backend; got {model_type!r}.")
    if getattr(hf_config, "use_sliding_window", False):
        raise ValueError("sliding-window attention (use_sliding_window=true) is not supported "
                         "by the native backend; use the hf backend.")
    num_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = bool(getattr(hf_config, "attention_bias", False))
    tie = bool(getattr(hf_config, "tie_word_embeddings", False))
    return ModelConfig(
        model_type=model_type, vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size, intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers, num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim, rms_norm_eps=hf_config.rms_norm_eps,
        max_position=hf_config.max_position_embeddings, tie_word_embeddings=tie,
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        qk_norm=model_type == "qwen3")


def rope_inv_freq(hf_config: Any, head_dim: int) -> tuple[Tensor, float]:
    """RoPE inverse frequencies ``[head_dim // 2]`` (float32) and the cos/sin scaling factor."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta") or getattr(hf_config, "rope_theta", None) or 10000.0
    if rope_type == "default":
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    if rope_type == "dynamic":
        raise ValueError("rope_type 'dynamic' (NTK scaling that depends on sequence length) is "
                         "not supported by the native backend; use the hf backend.")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: PLC0415

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"rope_type {rope_type!r} is not supported; known: "
                         f"default, {', '.join(ROPE_INIT_FUNCTIONS)}.")
    inv, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv.float(), float(attention_scaling)


def pack_linear(weight: Tensor, *, enabled: bool | None = None) -> Tensor:
    """``weight`` reordered for oneDNN's CPU matmul when that pays, else ``weight`` itself.

    ``enabled=None`` asks :func:`ttc.engine.hardware.can_pack_linear` (bf16 on a CPU whose
    oneDNN runs bf16, float32 on x86); ``False`` keeps the plain layout. The packed tensor
    is opaque (an MKL-DNN tensor): only :func:`linear` and :func:`linear_add` read it.
    """
    if enabled is None:
        enabled = can_pack_linear(weight.dtype, weight.device)
    if (not enabled or weight.device.type != "cpu"
            or weight.dtype not in (torch.bfloat16, torch.float32)):
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` for a plain weight or one from :func:`pack_linear`."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_add(x: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x + a @ weight.T (+ bias)`` in one op: oneDNN's binary post-op for a packed
    weight, ``addmm`` for a plain one."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise.binary(a, x, weight, bias, "add")
    if bias is not None:
        return x + F.linear(a, weight, bias)
    return torch.addmm(x, a, weight.t())


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Normalise in float32 as transformers does, then scale in the weight's dtype.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(weight.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [num_tokens, heads, head_dim]; cos, sin: [num_tokens, 1, head_dim]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.addcmul(x * cos, rotated, sin)


@dataclass(frozen=True, kw_only=True)
class LayerWeights:
    input_norm: Tensor
    qkv: Tensor             # [(num_heads + 2 * num_kv_heads) * head_dim, hidden]
    qkv_bias: Tensor | None
    o: Tensor               # [hidden, num_heads * head_dim]
    o_bias: Tensor | None
    q_norm: Tensor | None   # [head_dim] (Qwen3)
    k_norm: Tensor | None
    post_norm: Tensor
    gate_up: Tensor         # [2 * intermediate, hidden]
    gate_up_bias: Tensor | None
    down: Tensor            # [hidden, intermediate]
    down_bias: Tensor | None


class NativeModel:
    """Weights plus the forward pass; see the module docstring."""

    # Names a part of the forward for a profiler: a no-op unless profile.census sets
    # torch.profiler.record_function on the instance.
    label = staticmethod(_no_label)

    def __init__(self, config: ModelConfig, *, embed: Tensor, layers: list[LayerWeights],
                 norm: Tensor, lm_head: Tensor, inv_freq: Tensor, rope_scale: float,
                 attention: str = "auto", pack: bool | None = None) -> None:
        self.config = config
        self.embed = embed
        if pack is None:          # the hardware decides (ttc.engine.hardware)
            pack = can_pack_linear(embed.dtype, embed.device)
        self.packed = pack
        self.layers = [_packed(w) if pack else w for w in layers]
        self.norm = norm
        # NOTE: a tied head is packed into its own copy; the embedding table stays plain.
        self.lm_head = pack_linear(lm_head, enabled=pack)
        self.inv_freq = inv_freq.to(embed.device)
        self.rope_scale = rope_scale
        self.attention = attention
        self.scale = config.head_dim ** -0.5
        self.fused = True            # False: forward_reference (tests compare the two)
        self._kv_memo: tuple[Tensor, list] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def num_params(self) -> tuple[int, int]:
        """``(all parameters, those of the embedding table)``; a tied LM head counts once."""
        c = self.config
        attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + \
            c.num_heads * c.head_dim * c.hidden_size
        mlp = 3 * c.hidden_size * c.intermediate_size
        per_layer = attn + mlp + 2 * c.hidden_size
        embed = c.vocab_size * c.hidden_size
        head = 0 if c.tie_word_embeddings else embed
        return embed + c.num_layers * per_layer + c.hidden_size + head, embed

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.embed.element_size()

    def rope(self, positions: Tensor, *, signed: bool = False) -> tuple[Tensor, Tensor]:
        """cos, sin ``[num_tokens, 1, head_dim]`` in the model dtype for integer positions.

        ``signed``: the first half of ``sin`` negated, so that the rotation is
        ``x * cos + roll(x, head_dim // 2) * sin`` (``roll`` gives ``cat(x2, x1)``; the
        reference's ``rotate_half`` is ``cat(-x2, x1)``)."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq        # [num_tokens, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype).unsqueeze(1)
        sin = emb.sin() * self.rope_scale
        if signed:
            sin[:, : sin.shape[-1] // 2].neg_()
        return cos, sin.to(self.dtype).unsqueeze(1)

    @torch.inference_mode()
    def forward(self, token_ids: Tensor, positions: Tensor, slots: Tensor,
                kv: Tensor, plan: ExtendPlan | DecodePlan) -> Tensor:
        """Run tokens through the decoder, writing their KV; return hidden states.

        Parameters
        ----------
        token_ids, positions, slots : Tensor
            ``[num_tokens]`` int64: ids, absolute positions, flat cache slots
            (``page * page_size + offset``) where each token's key/value is written.
        kv : Tensor
            ``[num_layers, 2, num_pages, page_size, num_kv_heads, head_dim]``, model dtype.
        plan : ExtendPlan | DecodePlan
            ``DecodePlan``: one token per branch, in plan order.

        Returns
        -------
        Tensor
            ``[num_tokens, hidden]``, final RMSNorm applied, model dtype.
        """
        with self.label("ttc::forward"):        # a profiler range (profile.census)
            if self.fused:
                return self._forward_fused(token_ids, positions, slots, kv, plan)
            return self.forward_reference(token_ids, positions, slots, kv, plan)

    def _forward_fused(self, token_ids: Tensor, positions: Tensor, slots: Tensor,
                       kv: Tensor, plan: ExtendPlan | DecodePlan) -> Tensor:
        """:meth:`forward_reference` in fewer ops: each norm one op (weight inside), the
        residual adds inside the o and down matmuls (oneDNN post-op / ``addmm``), RoPE as
        ``x * cos + roll(x) * signed sin`` on queries and keys at once, and the KV views
        made once per pool. Same math; float32 results agree with the reference to
        rounding (greedy tokens are tested equal)."""
        c = self.config
        n = token_ids.shape[0]
        heads, kv_heads, d = c.num_heads, c.num_kv_heads, c.head_dim
        q_size, qk_size = heads * d, (heads + kv_heads) * d
        eps = c.rms_norm_eps
        cos, sin = self.rope(positions, signed=True)
        views = self._kv_views(kv)
        x = F.embedding(token_ids, self.embed)                        # [n, hidden]
        attend = decode_attention if isinstance(plan, DecodePlan) else extend_attention
        for w, (k_cache, v_cache, k_flat, v_flat) in zip(self.layers, views):
            qkv = linear(F.rms_norm(x, (x.shape[-1],), w.input_norm, eps), w.qkv, w.qkv_bias)
            if w.q_norm is None:    # queries and keys rotate together
                qk = qkv[:, :qk_size].view(n, heads + kv_heads, d)
                qk = torch.addcmul(qk * cos, qk.roll(d // 2, -1), sin)
                q, k = qk[:, :heads], qk[:, heads:]
            else:
                q = F.rms_norm(qkv[:, :q_size].view(n, heads, d), (d,), w.q_norm, eps)
                k = F.rms_norm(qkv[:, q_size:qk_size].view(n, kv_heads, d), (d,), w.k_norm, eps)
                q = torch.addcmul(q * cos, q.roll(d // 2, -1), sin)
                k = torch.addcmul(k * cos, k.roll(d // 2, -1), sin)
            # NOTE: keys/values are written before attention reads them.
            k_flat.index_copy_(0, slots, k)
            v_flat.index_copy_(0, slots, qkv[:, qk_size:].view(n, kv_heads, d))
            with self.label("ttc::attention"):     # a profiler range (profile.census)
                a = attend(q, k_cache, v_cache, plan, scale=self.scale, impl=self.attention)
            x = linear_add(x, a.view(n, q_size), w.o, w.o_bias)
            gu = linear(F.rms_norm(x, (x.shape[-1],), w.post_norm, eps), w.gate_up,
                        w.gate_up_bias)
            g, u = gu.chunk(2, dim=-1)
            x = linear_add(x, F.silu(g).mul_(u), w.down, w.down_bias)
        return F.rms_norm(x, (x.shape[-1],), self.norm, eps)

    def _kv_views(self, kv: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer ``(k_cache, v_cache, k_flat, v_flat)`` views of the pool ``kv``, made
        once per pool tensor (each view is an op; 30 layers made 150 of them a step)."""
        memo = self._kv_memo
        if memo is None or memo[0] is not kv:
            c = self.config
            views = []
            for i in range(c.num_layers):
                k_cache, v_cache = kv[i, 0], kv[i, 1]
                views.append((k_cache, v_cache, k_cache.view(-1, c.num_kv_heads, c.head_dim),
                              v_cache.view(-1, c.num_kv_heads, c.head_dim)))
            memo = self._kv_memo = (kv, views)
        return memo[1]

    def forward_reference(self, token_ids: Tensor, positions: Tensor, slots: Tensor,
                          kv: Tensor, plan: ExtendPlan | DecodePlan) -> Tensor:
        """The forward written op by op as transformers does it (the spec of the fused
        path, which tests compare against)."""
        c = self.config
        n = token_ids.shape[0]
        q_size = c.num_heads * c.head_dim
        kv_size = c.num_kv_heads * c.head_dim
        cos, sin = self.rope(positions)
        x = F.embedding(token_ids, self.embed)                        # [n, hidden]
        is_decode = isinstance(plan, DecodePlan)
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.input_norm, c.rms_norm_eps)
            qkv = linear(h, w.qkv, w.qkv_bias)                        # [n, q + 2 kv]
            v = qkv[:, q_size + kv_size:].view(n, c.num_kv_heads, c.head_dim)
            if w.q_norm is None:    # queries and keys rotate together: half the small ops
                qk = _rotate(qkv[:, :q_size + kv_size].view(n, -1, c.head_dim), cos, sin)
                q, k = qk[:, :c.num_heads], qk[:, c.num_heads:]
            else:
                q = qkv[:, :q_size].view(n, c.num_heads, c.head_dim)
                k = qkv[:, q_size:q_size + kv_size].view(n, c.num_kv_heads, c.head_dim)
                q = _rotate(_rms_norm(q, w.q_norm, c.rms_norm_eps), cos, sin)
                k = _rotate(_rms_norm(k, w.k_norm, c.rms_norm_eps), cos, sin)
            k_cache, v_cache = kv[i, 0], kv[i, 1]
            # NOTE: keys/values are written before attention reads them (extend reads
            # the new tokens' own KV from the cache; decode reads the suffix pages).
            k_cache.view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, slots, k)
            v_cache.view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, slots, v)
            with self.label("ttc::attention"):     # a profiler range (profile.census)
                if is_decode:
                    a = decode_attention(q, k_cache, v_cache, plan, scale=self.scale,
                                         impl=self.attention)
                else:
                    a = extend_attention(q, k_cache, v_cache, plan, scale=self.scale,
                                         impl=self.attention)
            x = x + linear(a.reshape(n, q_size), w.o, w.o_bias)
            h = _rms_norm(x, w.post_norm, c.rms_norm_eps)
            gu = linear(h, w.gate_up, w.gate_up_bias)
            g, u = gu.chunk(2, dim=-1)
            x = x + linear(F.silu(g) * u, w.down, w.down_bias)
        return _rms_norm(x, self.norm, c.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        """``[num_rows, hidden]`` final-norm hidden states -> ``[num_rows, vocab]`` float32 logits."""
        return linear(hidden.to(self.dtype), self.lm_head, None).float()


def _packed(w: LayerWeights) -> LayerWeights:
    return replace(w, qkv=pack_linear(w.qkv, enabled=True), o=pack_linear(w.o, enabled=True),
                   gate_up=pack_linear(w.gate_up, enabled=True),
                   down=pack_linear(w.down, enabled=True))


def from_hf(hf_config: Any, state_dict: Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, attention: str = "auto",
            pack: bool | None = None) -> NativeModel:
    """Build a :class:`NativeModel` from a transformers config and HF parameter names."""
    c = model_config_from_hf(hf_config)
    sd = dict(state_dict)

    def take(name: str, *, required: bool = True) -> Tensor | None:
        t = sd.get(name)
        if t is None:
            if required:
                raise ValueError(f"the state dict has no {name!r}; is this a "
                                 f"{c.model_type} checkpoint?")
            return None
        return t.to(device=device or t.device, dtype=dtype or t.dtype).contiguous()

    embed = take("model.embed_tokens.weight")
    layers = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        q, k, v = (take(p + f"self_attn.{n}_proj.weight") for n in "qkv")
        biases = [take(p + f"self_attn.{n}_proj.bias", required=c.qkv_bias) for n in "qkv"]
        gate, up = take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")
        gb = take(p + "mlp.gate_proj.bias", required=False)
        ub = take(p + "mlp.up_proj.bias", required=False)
        layers.append(LayerWeights(
            input_norm=take(p + "input_layernorm.weight"),
            qkv=torch.cat([q, k, v]).contiguous(),
            qkv_bias=torch.cat(biases).contiguous() if all(b is not None for b in biases) else None,
            o=take(p + "self_attn.o_proj.weight"),
            o_bias=take(p + "self_attn.o_proj.bias", required=False),
            q_norm=take(p + "self_attn.q_norm.weight", required=c.qk_norm),
            k_norm=take(p + "self_attn.k_norm.weight", required=c.qk_norm),
            post_norm=take(p + "post_attention_layernorm.weight"),
            gate_up=torch.cat([gate, up]).contiguous(),
            gate_up_bias=torch.cat([gb, ub]) if gb is not None and ub is not None else None,
            down=take(p + "mlp.down_proj.weight"),
            down_bias=take(p + "mlp.down_proj.bias", required=False)))
    lm_head = take("lm_head.weight", required=False)
    if lm_head is None or c.tie_word_embeddings:
        lm_head = embed
    inv_freq, rope_scale = rope_inv_freq(hf_config, c.head_dim)
    return NativeModel(c, embed=embed, layers=layers, norm=take("model.norm.weight"),
                       lm_head=lm_head, inv_freq=inv_freq, rope_scale=rope_scale,
                       attention=attention, pack=pack)
