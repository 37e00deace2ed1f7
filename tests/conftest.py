"""Shared test set-up: markers, GPU skipping, deterministic seeds."""

from __future__ import annotations

import random

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight Llama with its tokenizer saved as a HF folder (``fakes.save_tiny``,
    context 256 tokens), built once and only read by the tests that load it."""
    from fakes import save_tiny

    folder = tmp_path_factory.mktemp("tiny") / "m"
    save_tiny(folder)
    return folder
