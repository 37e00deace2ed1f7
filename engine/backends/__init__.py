"""Engines other than the native one, behind the same Generator protocol: transformers
(``hf``), vLLM (``vllm``), OpenAI-compatible servers (``http``), the seeded simulator
(``simulated``), and the Generator the token-sequence engines share (``token_handles``).
Every backend keeps its handles in :class:`ttc.engine.handles.HandleTable`."""
