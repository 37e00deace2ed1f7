"""ttc.faults: which failures are user errors, which stop an eval, and their one line."""

from __future__ import annotations

import errno
import os

import pytest

from ttc.engine.native.kv_cache import KVCacheFull
from ttc.faults import describe, exit_code, one_line, stops_the_run
from ttc.registry import ConfigError


class ServerDown(ConnectionError):
    pass


def _os_error(code: int, filename: str = "out/x.json") -> OSError:
    return OSError(code, os.strerror(code), filename)


@pytest.mark.parametrize("err, code, stops", [
    (ConfigError("strategy.n must be positive; got 0."), 2, False),
    (ValueError("the prompt has 900 tokens; the model's context is 512 tokens."), 2, False),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "trees"), 2, True),
    (KVCacheFull("the KV cache is full; raise backend.kv_memory_gb."), 1, False),
    (MemoryError(), 1, True),
    (ServerDown("could not reach http://127.0.0.1:9/v1"), 1, True),
    (_os_error(errno.ENOSPC), 1, True),
    (RuntimeError("a strategy bug"), 1, False),
    (KeyboardInterrupt(), 1, True),
])
def test_exit_codes_and_what_stops_an_eval(err, code, stops):
    assert exit_code(err) == code
    assert stops_the_run(err) is stops


def test_lines_name_the_cause_and_what_to_change():
    assert one_line(ConfigError("bad value.\nmore detail")) == "bad value."
    server = one_line(ServerDown("could not reach http://127.0.0.1:9/v1."))
    assert server.startswith("could not reach http://127.0.0.1:9/v1; check that the server")
    assert "backend.base_url" in server
    assert one_line(_os_error(errno.ENOSPC)) == (
        "No space left on device: 'out/x.json'; the disk is full; free space or choose "
        "another output folder.")
    assert "backend.kv_memory_gb" in one_line(_os_error(errno.ENOMEM))
    assert one_line(MemoryError()).startswith("out of memory; lower backend.kv_memory_gb")
    assert one_line(RuntimeError("boom")) == (
        "internal error (RuntimeError: boom); rerun with --debug (or TTC_DEBUG=1) for the "
        "traceback.")
    err = ServerDown("gone.")
    err.add_note("3 of 9 problems are recorded in r.jsonl; rerun the same command to resume.")
    assert one_line(err).endswith("; 3 of 9 problems are recorded in r.jsonl; rerun the same "
                                  "command to resume.")
    assert "\n" not in one_line(err)
    assert describe(KVCacheFull("full\nline two")) == "KVCacheFull: full"
