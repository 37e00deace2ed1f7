"""Loading verifier checkpoints and splitting chat templates around placeholders.

Contract: :func:`resolve_checkpoint` turns a spec (a local folder, or a hub id when
online) into a local folder with ``config.json``; :func:`load_causal_lm` returns
``(model, tokenizer)`` for a causal LM (spec ``None`` = the embedded SmolLM2-135M-Instruct,
through ``ttc.engine.loader`` when it is installed); :func:`template_pieces` renders a
chat with placeholder strings and returns the text between them, so formats tokenize
each piece on its own (docs/algorithms.md#process-reward-models: never re-tokenize a concatenation).
Must NOT know: strategies, how scores are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ttc.registry import ConfigError

__all__ = ["resolve_checkpoint", "read_config", "load_causal_lm", "template_pieces",
           "torch_dtype", "load_tokenizer"]


def torch_dtype(name: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"verifier dtype {name!r} is not one of {', '.join(table)}.")
    return table[name]


def resolve_checkpoint(spec: str) -> Path:
    """A local folder holding ``config.json`` for ``spec`` (a folder or a hub id)."""
    from ttc.engine.loader import resolve_folder

    folder, _ = resolve_folder(spec)
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"verifier model {spec!r} resolves to {str(folder)!r}, which has "
                          f"no config.json.")
    return Path(folder)


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_causal_lm(spec: str | None, *, dtype: str = "float32", device: str = "cpu"
                   ) -> tuple[Any, Any]:
    """``(transformers causal LM in eval mode, tokenizer)``; ``None`` = the embedded model."""
    dt = torch_dtype(dtype)
    from ttc.engine.loader import load_hf_model

    model, tok = load_hf_model(spec, dtype=dt, device=device)
    return model.eval(), tok


def template_pieces(tokenizer: Any, messages: Sequence[dict[str, str]],
                    placeholders: Sequence[str], *, add_generation_prompt: bool) -> list[str]:
    """Render ``messages`` with the chat template and split the text at ``placeholders``.

    Returns ``len(placeholders) + 1`` pieces in order. Raises ValueError when the
    tokenizer has no chat template or the template drops a placeholder.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; this PRM format needs one.")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    pieces = []
    for ph in placeholders:
        idx = text.find(ph)
        if idx < 0:
            raise ValueError(f"the chat template dropped the placeholder {ph!r}; cannot locate "
                             f"the scored positions.")
        pieces.append(text[:idx])
        text = text[idx + len(ph):]
    pieces.append(text)
    return pieces
