"""How much memory a device can still give, and the check that a KV pool fits in it.

Contract: :func:`available_bytes` says how many bytes a KV pool on a device can hold
(``None``: unknown, so nothing is checked). On CPU that is the machine's physical memory
(``MemTotal`` from ``/proc/meminfo``, else ``sysconf``): the pool lives in anonymous
``mmap`` memory that is committed page by page as it fills, so it costs memory only as
branches use it, and what other processes hold right now says nothing about whether it
can be created; a pool larger than the machine can never fill and is refused. On CUDA the
pool is allocated whole at start, so it is the free bytes ``torch.cuda.mem_get_info``
reports now.
:func:`check_pool_fits` raises one :class:`~ttc.registry.ConfigError` naming the setting,
the pool it asks for and what is available, before anything is allocated (a pool beyond
the machine would otherwise fail late: ``ENOMEM`` after minutes, or an OOM kill).
Must NOT know: models, pages, radix trees, sampling.
"""

from __future__ import annotations

import os
from pathlib import Path

from ttc.registry import ConfigError

GIB = 1 << 30


def available_bytes(device: object) -> int | None:
    """Bytes a new allocation on ``device`` (a ``torch.device`` or a name) can get now."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cpu":
        return _cpu_available()
    if kind == "cuda":
        import torch  # noqa: PLC0415

        return int(torch.cuda.mem_get_info(device)[0])
    return None


def _cpu_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024       # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_pool_fits(pool_bytes: int, *, device: object, setting: str, value: float) -> None:
    """Raise :class:`ConfigError` if a ``pool_bytes`` pool cannot fit on ``device`` now."""
    available = available_bytes(device)
    if available is None or pool_bytes <= available:
        return
    kind = getattr(device, "type", str(device))
    suggest = int(available * 0.8 / GIB * 100) / 100          # leave room for activations
    hint = (f"lower {setting} to {suggest:g} or less" if suggest > 0
            else f"free {kind} memory first")
    raise ConfigError(f"{setting}={value!r} asks for a {pool_bytes / GIB:,.2f} GB KV pool but "
                      f"only {available / GIB:,.2f} GB of {kind} memory is available; {hint}.")
