"""The bench's vLLM column reports, rather than crashes, when vLLM cannot run."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from ttc.engine.vllm_bench import measure_vllm


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_a_python_without_vllm_gives_no_column_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("TTC_VLLM_PYTHON", sys.executable)
    figures, note = measure_vllm(model_dir=str(tmp_path), question="Q", branches=2,
                                 params={"temperature": 0.8, "max_tokens": 4}, timeout_s=120)
    assert figures is None
    assert note.startswith("vLLM column failed") and "vllm" in note.lower()
