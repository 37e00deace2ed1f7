"""What a failure means to a user: an exit code and one line naming the cause and the fix.

Contract: :func:`exit_code` and :func:`one_line` classify an exception by its built-in
base classes alone, so every layer keeps raising its own precise errors and the command
line (``ttc.cli``) turns each into one line on stderr:

    exit 2  a user error: the command, a setting or an input is wrong and nothing ran
            (``ValueError``, so :class:`~ttc.registry.ConfigError`; a missing file, a
            folder where a file is needed, a path that cannot be written)
    exit 1  a fault met at run time: a resource ran out (``MemoryError``, so the engine's
            ``KVCacheFull``), a server is down (``ConnectionError``), a disk is full or
            another ``OSError``, or an internal error (a bug: the line says so)

:func:`stops_the_run` says which faults stop an eval (the machine or the network failed:
every later problem would fail the same way) rather than becoming that problem's
failed record (a problem too long for the model, a search that does not fit the KV
pool, an error in a strategy).
Must NOT know: Hydra, engines, servers, strategies; no concrete error class of theirs.
"""

from __future__ import annotations

import errno

USER_ERROR = 2
FAULT = 1

_USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                   PermissionError, FileExistsError)

_OS_HINTS = {
    errno.ENOMEM: "the machine is out of memory; lower backend.kv_memory_gb, the "
                  "strategy's width or concurrency",
    errno.ENOSPC: "the disk is full; free space or choose another output folder",
}


def exit_code(err: BaseException) -> int:
    """2 for user errors (fix the command and rerun), 1 for run-time faults."""
    if isinstance(err, (ValueError, *_USER_OS_ERRORS)):
        return USER_ERROR
    return FAULT


def is_internal(err: BaseException) -> bool:
    """An error no input explains (a bug): not a user error, resource, OS or network fault."""
    return not isinstance(err, (ValueError, OSError, MemoryError, TimeoutError))


def stops_the_run(err: BaseException) -> bool:
    """True for faults of the machine or the network (an eval stops; a rerun resumes);
    False for faults of one problem (it becomes a failed record and the eval goes on)."""
    if not isinstance(err, Exception):
        return True                               # KeyboardInterrupt, SystemExit
    if isinstance(err, OSError):                  # ConnectionError, ENOSPC, ENOMEM ...
        return True
    # A bare MemoryError is the machine running out; a subclass (the engine's
    # KVCacheFull) is one search not fitting the pool it was given.
    return type(err) is MemoryError


def describe(err: BaseException) -> str:
    """``Type: first line of the message``, for records and logs."""
    return f"{type(err).__name__}: {_message(err)}"


def one_line(err: BaseException) -> str:
    """One line for stderr: the cause and, where it is known, what to change; then the
    exception's notes (``add_note``: what was kept, how to resume)."""
    line = _line(err)
    for note in getattr(err, "__notes__", ()):
        line = f"{line.rstrip('.')}; {' '.join(str(note).split())}"
    return line


def _line(err: BaseException) -> str:
    msg = _message(err)
    if isinstance(err, ConnectionError):
        return (f"{msg.rstrip('.')}; check that the server is running, or point the "
                f"base_url setting (backend.base_url, verifier.base_url) at one.")
    if isinstance(err, OSError) and err.errno in _OS_HINTS:
        return f"{msg.rstrip('.')}; {_OS_HINTS[err.errno]}."
    if type(err) is MemoryError:
        return (f"out of memory{': ' + msg if msg != 'MemoryError' else ''}; lower "
                f"backend.kv_memory_gb, the strategy's width or concurrency.")
    if isinstance(err, KeyboardInterrupt):
        return "interrupted."
    if is_internal(err):
        return (f"internal error ({type(err).__name__}: {msg.rstrip('.')}); rerun with "
                f"--debug (or TTC_DEBUG=1) for the traceback.")
    return msg


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        # "[Errno 21] Is a directory: 'x'" -> "Is a directory: 'x'"
        where = f": {str(err.filename)!r}" if err.filename is not None else ""
        return f"{err.strerror}{where}"
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
