"""What a PRM or a server needs beyond expand: hidden states, logits, prompt log-probs,
embeddings.

Contract: :class:`Extras` is the part of the engine that runs tokens for their hidden
states rather than to sample after them. ``extend`` / ``extend_batch`` run new tokens
after a handle (or after a token-id prefix matched against the tree) in the engine's
prefill steps, chunked beside other callers' decodes, and return the new tokens'
final-norm hidden states plus a pinned handle on prefix + new tokens (incremental PRM
scoring); ``extend_batch_usage`` also returns the tokens actually computed, the figure to
charge. ``logits`` applies the LM head; ``score_tokens`` gives prompt log-probs from one
extend (nothing stays pinned); ``embed`` gives each handle's last hidden state,
L2-normalised. An extend that fails, or whose caller is interrupted while it waits,
releases the handles it made and cancels their prefills.
Must NOT know: rewards, what a step is, why a branch is scored.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ttc.engine.native.jobs import resolver
from ttc.types import Handle

if TYPE_CHECKING:
    from ttc.engine.handles import HandleTable
    from ttc.engine.native.handles import HandleState
    from ttc.engine.native.kv_cache import RadixTree
    from ttc.engine.native.lock import TicketLock
    from ttc.engine.native.model import NativeModel
    from ttc.engine.native.scheduler import Scheduler

__all__ = ["Extras"]


class Extras:
    """Extend, score and embed (a mixin: the engine sets the attributes below)."""

    model: NativeModel
    tree: RadixTree
    scheduler: Scheduler
    _lock: TicketLock
    _handles: HandleTable[HandleState]
    # and the other parts' _state, _new_handle, _drop_state, release (handles.py),
    # _prefill (prefill.py), _notify (loop.py)

    def extend(self, prefix: Handle | Sequence[int], new_token_ids: Sequence[int]
               ) -> tuple[Tensor, int]:
        """Run ``new_token_ids`` after ``prefix``; return their hidden states and a pinned handle.

        Returns ``(hidden [len(new_token_ids), hidden_size] with the final norm applied,
        handle)``; the handle names prefix + new tokens.
        """
        hidden, handles = self.extend_batch([(prefix, new_token_ids)])
        return hidden[0], handles[0]

    def extend_batch(self, items: Sequence[tuple[Handle | Sequence[int], Sequence[int]]]
                     ) -> tuple[list[Tensor], list[int]]:
        """:meth:`extend` for many items, prefilled in the engine's steps (chunked)."""
        hidden, handles, _ = self.extend_batch_usage(items)
        return hidden, handles

    def extend_batch_usage(self, items: Sequence[tuple[Handle | Sequence[int], Sequence[int]]]
                           ) -> tuple[list[Tensor], list[int], int]:
        """:meth:`extend_batch`, plus the tokens the engine actually computed for it.

        That is at least the new tokens: a token-id prefix matched against the tree
        reuses whole cached pages only, so up to a page of the prefix may run again.
        Charge this figure, not the count asked for.
        """
        futures: list[Future] = []
        counts, hids = [], []
        computed = 0
        with self._lock:
            try:
                for prefix, new in items:
                    new = [int(t) for t in new]
                    if not new:
                        raise ValueError("extend needs at least one new token; got none.")
                    if isinstance(prefix, (list, tuple)):
                        ids = [int(t) for t in prefix] + new
                        node = self.tree.match(ids, limit=len(prefix))
                        prompt_len = len(prefix)
                        tail = ids[node.end:]
                    else:
                        st = self._state(prefix)
                        node, tail, prompt_len = st.node, list(st.tail) + new, st.prompt_len
                    if node.end + len(tail) > self.model.config.max_position:
                        raise ValueError(f"the sequence would have {node.end + len(tail)} "
                                         f"tokens; the model's context is "
                                         f"{self.model.config.max_position} tokens.")
                    hid = self._new_handle(node, tail, prompt_len)
                    hids.append(hid)
                    counts.append(len(new))
                    computed += len(tail)
                    fut: Future = Future()
                    futures.append(fut)
                    self._prefill(self._handles.get(hid), keep_hidden=True,
                                  on_hidden=resolver(fut))
            except BaseException:
                self._release_locked(hids, futures)
                raise
        self._notify()
        try:
            hidden = [f.result() for f in futures]
        except BaseException:
            with self._lock:
                self._release_locked(hids, futures)
            raise
        return [h[-n:] for h, n in zip(hidden, counts)], hids, computed

    def _release_locked(self, hids: Sequence[int], futures: Sequence[Future]) -> None:
        for hid in hids:
            st = self._handles.pop(hid)
            if st is None:
                continue
            if st.task is not None:
                self.scheduler.cancel_prefill(st.task)
                self.tree.unpin(st.task.parent)
                st.task = None
            self._drop_state(st)
        for f in futures:
            f.cancel()

    def logits(self, hidden: Tensor) -> Tensor:
        """``[rows, hidden_size]`` final-norm hidden states -> ``[rows, vocab]`` float32 logits."""
        with torch.inference_mode():
            return self.model.logits(hidden)

    def score_tokens(self, token_ids: Sequence[int], *, top_k: int = 0
                     ) -> tuple[list[float | None], list[list[tuple[int, float]]], int]:
        """Log-probabilities the model gives each of ``token_ids`` after the ones before it
        (prompt log-probs, as for ``echo`` with ``logprobs``), from one prefill.

        Returns ``(logprobs, top, computed)``: ``logprobs[i]`` is the natural-log
        probability of token ``i`` given tokens ``0..i-1`` (``None`` for token 0, which has
        no context); ``top[i]`` the ``top_k`` most likely ``(token_id, logprob)`` at that
        position (empty for token 0); ``computed`` the tokens run through the model (to
        charge). Nothing stays pinned: the sequence's handle is released, so its KV that no
        other handle shares is freed at once.
        """
        ids = [int(t) for t in token_ids]
        if not 0 <= top_k <= 20:
            raise ValueError(f"top_k must be in [0, 20]; got {top_k!r}.")
        hidden, handles, computed = self.extend_batch_usage([((), ids)])
        try:
            # hidden[0]: [num_tokens, hidden_size]; row i predicts token i + 1.
            logp = torch.log_softmax(self.logits(hidden[0][:-1]).float(), dim=-1)
        finally:
            self.release(handles)
        nxt = torch.tensor(ids[1:], dtype=torch.long)
        chosen = logp.gather(1, nxt[:, None]).squeeze(1).tolist() if len(ids) > 1 else []
        top: list[list[tuple[int, float]]] = [[]]
        if top_k:
            values, idx = logp.topk(top_k, dim=-1)
            top += [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, values)]
        else:
            top += [[] for _ in chosen]
        return [None, *chosen], top, computed

    def embed(self, handles: Sequence[Handle]) -> list[list[float]]:
        """The final hidden state of each handle's last token, L2-normalised."""
        return self.embed_usage(handles)[0]

    def embed_usage(self, handles: Sequence[Handle]) -> tuple[list[list[float]], int]:
        """:meth:`embed`, plus the tokens it computed (a handle's tail not yet prefilled;
        a computed handle's vector is its stored hidden state and costs nothing)."""
        futures = []
        computed = 0
        with self._lock:
            states = [self._state(h) for h in handles]
            for st in states:
                if st.tail and st.task is None:
                    fut: Future = Future()
                    futures.append(fut)
                    computed += len(st.tail)
                    self._prefill(st, on_hidden=resolver(fut))
                elif st.task is not None:
                    raise RuntimeError("embed of a handle whose prefill is still running")
        if futures:
            self._notify()
            for f in futures:
                f.result()
        out = []
        with self._lock:
            for st in states:
                v = st.node.payload.float()
                out.append((v / v.norm().clamp_min(1e-6)).tolist())
        return out, computed
