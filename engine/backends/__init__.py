"""Engines other than the native one, behind the same Generator protocol: transformers
(``hf``), vLLM (``vllm``), OpenAI-compatible servers (``http``), the seeded simulator
(``simulated``), and the token-handle table the token-sequence backends share."""
