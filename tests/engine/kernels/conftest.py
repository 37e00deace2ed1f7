"""Kernel tests run on CUDA when there is one, else on the Triton CPU interpreter.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it is set here,
before any test module imports ``ttc.engine.native.kernels``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if "ttc.engine.native.kernels" in sys.modules and not interpreting:
        raise RuntimeError("ttc.engine.native.kernels was imported before tests/engine/kernels/conftest.py "
                           "could set TRITON_INTERPRET=1; run these tests in their own process.")
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(params=[pytest.param("cpu", id="interp"),
                        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)])
def kernel_device(request) -> str:
    """``"cpu"`` under the interpreter (no CUDA) or ``"cuda"``; the other one is skipped."""
    if request.param == "cpu" and HAS_CUDA:
        pytest.skip("CUDA is present: kernels run compiled, not interpreted")
    return request.param
