"""Handles into a native engine: what each names, and the calls that pin, read and end them.

Contract: a handle (an int from the engine's :class:`~ttc.engine.handles.HandleTable`)
names a token sequence by a :class:`HandleState`: a radix-tree node whose KV is resident,
plus, for a sequence not yet run, a ``tail`` of tokens still to prefill. :class:`HandleAPI`
is the part of the engine that issues and ends them, every call under the engine lock::

    handle_for_tokens(ids)   longest cached prefix of ids + the rest as tail   -> pinned
    truncate(h, position)    the first ``position`` tokens of h                -> pinned
    pin / unpin              pinned: its node's lock keeps the path resident;
                             unpinned: kept as evictable cache (lowest value first, then LRU)
    release                  unpin, and free at once every page no pinned handle shares
    token_ids / token_count / text_of (text after the root prompt)

NOTE: a pinned handle holds one ``tree.pin`` of its node; an unpinned one holds one
``tree.retain`` instead; a released one holds neither (``released`` tells a prefill in
flight that nobody will take its node).
Must NOT know: how jobs run or finish, the step loop, sampling, chat templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ttc.types import Handle

if TYPE_CHECKING:
    from ttc.engine.handles import HandleTable
    from ttc.engine.native.jobs import Job
    from ttc.engine.native.kv_cache import RadixNode, RadixTree
    from ttc.engine.native.lock import TicketLock
    from ttc.engine.native.model import NativeModel
    from ttc.engine.native.scheduler import PrefillTask

__all__ = ["HandleState", "HandleAPI"]


@dataclass(eq=False)
class HandleState:
    node: RadixNode
    tail: tuple[int, ...]          # tokens after node still to prefill
    pinned: bool                   # False: kept by ``unpin`` as evictable cache
    prompt_len: int                # tokens of the root prompt (text_of starts after it)
    task: PrefillTask | None = None            # the prefill of ``tail``, while in flight
    waiters: list[Job] = field(default_factory=list)
    released: bool = False


class HandleAPI:
    """The handle API of an engine (a mixin: the engine sets the attributes below)."""

    model: NativeModel
    tokenizer: Any
    tree: RadixTree
    _lock: TicketLock
    _handles: HandleTable[HandleState]

    def _new_handle(self, node: RadixNode, tail: Sequence[int], prompt_len: int) -> int:
        self.tree.pin(node)
        return self._handles.add(HandleState(node=node, tail=tuple(tail), pinned=True,
                                             prompt_len=prompt_len))

    def _state(self, handle: Handle) -> HandleState:
        st = self._handles.find(handle)
        if st is None or not st.node.alive:
            raise ValueError(f"handle {handle!r} is not live (released, evicted or never issued).")
        return st

    def handle_for_tokens(self, token_ids: Sequence[int], *, prompt_len: int | None = None) -> int:
        """A pinned handle for a token sequence: the longest cached prefix plus a tail to prefill."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("a sequence needs at least one token; got none.")
        if len(ids) >= self.model.config.max_position:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is "
                             f"{self.model.config.max_position} tokens.")
        with self._lock:
            node = self.tree.match(ids)
            if node.end == len(ids) and node.payload is None:
                # Fully cached but no hidden state for its last token: recompute the last
                # page's worth so the first sampled token has logits.
                node = self.tree.match(ids, limit=len(ids) - 1)
            return self._new_handle(node, ids[node.end:],
                                    len(ids) if prompt_len is None else prompt_len)

    def truncate(self, handle: Handle, position: int) -> int:
        """A new pinned handle for the first ``position`` tokens of ``handle``'s sequence."""
        with self._lock:
            st = self._state(handle)
            total = st.node.end + len(st.tail)
            if not 1 <= position <= total:
                raise ValueError(f"truncate position must be in 1..{total} (the handle's "
                                 f"tokens); got {position!r}.")
            ids = self.tree.tokens_of(st.node) + list(st.tail)
            return self.handle_for_tokens(ids[:position],
                                          prompt_len=min(st.prompt_len, position))

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        with self._lock:
            for h in handles:
                st = self._state(h)
                if st.pinned:
                    if value is not None:
                        st.node.value = value
                else:
                    self.tree.unretain(st.node)
                    self.tree.pin(st.node, value=value)
                    st.pinned = True

    def unpin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        """Unpin but keep the KV as evictable cache (lowest value evicted first)."""
        with self._lock:
            for h in handles:
                st = self._handles.find(h)
                if st is not None and st.pinned and st.node.alive:
                    st.pinned = False
                    self.tree.unpin(st.node, value=value)
                    self.tree.retain(st.node)

    def release(self, handles: Sequence[Handle]) -> None:
        """End handles; KV that no pinned handle shares is freed at once."""
        with self._lock:
            for h in handles:
                st = self._handles.pop(h)
                if st is not None:
                    self._drop_state(st)

    def _drop_state(self, st: HandleState) -> None:
        st.released = True
        if not st.node.alive:
            return                           # evicted while kept as cache
        if st.pinned:
            self.tree.unpin(st.node)
        else:
            self.tree.unretain(st.node)
        self.tree.free_unlocked(st.node)

    def token_ids(self, handle: Handle) -> list[int]:
        with self._lock:
            st = self._state(handle)
            return self.tree.tokens_of(st.node) + list(st.tail)

    def token_count(self, handle: Handle) -> int:
        with self._lock:
            st = self._state(handle)
            return st.node.end + len(st.tail)

    def text_of(self, handle: Handle) -> str:
        """Decoded text after the root prompt."""
        with self._lock:
            st = self._state(handle)
            ids = self.tree.tokens_of(st.node) + list(st.tail)
            return self.tokenizer.decode(ids[st.prompt_len:], skip_special_tokens=True)
