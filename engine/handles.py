"""The handle table every backend keeps: ids for handle states, their tree, and sweeping.

Contract: :class:`HandleTable` hands out integer handles for backend-specific states and
finds them again, with one error for a handle that is not live. States may form a tree
(``state.parent``: the parent's handle or ``None``) and carry a pin (``state.pinned``);
:meth:`HandleTable.sweep` drops every state that is neither pinned nor an ancestor of a
pinned one (what ``release`` frees on the token-sequence backends and the simulator).
The table is not locked: a backend that is called from several threads holds its own
lock around table operations (never across an engine call).
Must NOT know: models, KV, tokens, rewards, strategies.
"""

from __future__ import annotations

from typing import Any, Generic, Hashable, Iterator, TypeVar

S = TypeVar("S")


class HandleTable(Generic[S]):
    """Integer handles -> states (see the module docstring)."""

    def __init__(self) -> None:
        self._states: dict[int, S] = {}
        self._next = 0

    def add(self, state: S) -> int:
        hid = self._next
        self._next += 1
        self._states[hid] = state
        return hid

    def get(self, handle: Hashable) -> S:
        """The state of a live handle; ValueError naming the handle otherwise."""
        try:
            return self._states[handle]  # type: ignore[index]
        except (KeyError, TypeError):
            raise ValueError(f"handle {handle!r} is not live (released or never issued).") \
                from None

    def find(self, handle: Hashable) -> S | None:
        try:
            return self._states.get(handle)  # type: ignore[arg-type]
        except TypeError:
            return None

    def pop(self, handle: Hashable) -> S | None:
        try:
            return self._states.pop(handle, None)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __contains__(self, handle: Hashable) -> bool:
        return self.find(handle) is not None

    def __len__(self) -> int:
        return len(self._states)

    def items(self) -> Iterator[tuple[int, S]]:
        return iter(list(self._states.items()))

    def values(self) -> Iterator[S]:
        return iter(list(self._states.values()))

    def lineage(self, handle: int) -> Iterator[tuple[int, S]]:
        """``handle`` and its ancestors, nearest first."""
        cur: int | None = handle
        while cur is not None:
            st = self._states[cur]
            yield cur, st
            cur = _parent(st)

    def sweep(self) -> list[int]:
        """Drop states neither pinned nor an ancestor of a pinned one; return their ids."""
        keep: set[int] = set()
        for hid, st in self._states.items():
            if getattr(st, "pinned", False):
                cur: int | None = hid
                while cur is not None and cur not in keep:
                    keep.add(cur)
                    cur = _parent(self._states[cur])
        gone = [h for h in self._states if h not in keep]
        for h in gone:
            del self._states[h]
        return gone


def _parent(state: Any) -> int | None:
    return getattr(state, "parent", None)
