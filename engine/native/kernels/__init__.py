"""Triton kernels for the native engine's attention: prefix-shared decode and extend.

Contract: the public functions take the same plans and tensors as their torch
counterparts in ``ttc.engine.native.attention`` and return the same values (to floating-point
tolerance); ``ttc.engine.native.attention`` calls ``decode_attention``, ``extend_attention`` and
``merge_states`` from here on CUDA when ``attention="auto"`` or ``"triton"``. Every kernel
module holds its torch ``*_reference`` beside the kernel, and its launcher checks inputs
(``ValueError`` / ``TypeError``). Kernels run on CUDA, or on CPU under ``TRITON_INTERPRET=1``
(set before this package is imported; used by the tests). Importing needs ``triton``.

    prefix_decode   group queries x shared prefix pages (matrix-matrix, GQA-aware, split-K)
    suffix_decode   branch queries x own suffix pages (split-K, fused LSE merge)
    merge           merge_states (two states) and reduce_splits (split-K workspace)
    decode          decode_attention = prefix_decode + suffix_decode (+ reduce)
    extend          extend_attention: new tokens x cached prefix + causal among themselves
    launch          DecodeLaunch: split-K chunking derived from a plan
    bench           ``ttc bench attention`` (GPU only)

Must NOT know: models, tokens, radix trees, rewards, strategies.
"""

try:
    import triton  # noqa: F401
except ImportError as err:   # the engine falls back to torch; the bench says what is missing
    raise ModuleNotFoundError("ttc.engine.native.kernels needs triton (pip install 'ttc[triton]').",
                              name="ttc.engine.native.kernels") from err

from ttc.engine.native.kernels.decode import decode_attention, decode_attention_reference
from ttc.engine.native.kernels.extend import extend_attention, extend_attention_reference
from ttc.engine.native.kernels.launch import DecodeLaunch, plan_decode_launch
from ttc.engine.native.kernels.merge import (merge_states, merge_states_reference, reduce_splits,
                                      reduce_splits_reference)
from ttc.engine.native.kernels.prefix_decode import prefix_decode_attention, prefix_decode_reference
from ttc.engine.native.kernels.suffix_decode import suffix_decode_attention, suffix_decode_reference

__all__ = [
    "DecodeLaunch", "decode_attention", "decode_attention_reference", "extend_attention",
    "extend_attention_reference", "merge_states", "merge_states_reference",
    "plan_decode_launch", "prefix_decode_attention", "prefix_decode_reference",
    "reduce_splits", "reduce_splits_reference", "suffix_decode_attention",
    "suffix_decode_reference",
]
