"""Prefill bookkeeping: run a handle's tail, then move the handle onto the computed node.

Contract: :meth:`Prefill._prefill` queues a :class:`~ttc.engine.native.scheduler.PrefillTask`
for ``st.tail`` (the scheduler runs it in chunks, in the same steps as other callers'
decodes) and says what happens when it ends (the scheduler calls back under the engine
lock)::

    queued:  tree.pin(parent)                  the parent stays resident meanwhile
    done:    tree.unpin(parent); the tail becomes a child node (its pages, the last
             token's hidden state as payload); the handle's pin (or retain) moves from
             the parent to that node, or the node is freed if the handle was released;
             then on_hidden(hidden) and every job waiting on the handle that has no other
             prefill left starts decoding
    failed:  tree.unpin(parent); every waiting job fails; on_hidden(err)

Must NOT know: how a job decodes or completes (the job lifecycle does), sampling, prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from ttc.engine.native.scheduler import PrefillTask

if TYPE_CHECKING:
    from ttc.engine.native.handles import HandleState
    from ttc.engine.native.kv_cache import RadixTree
    from ttc.engine.native.scheduler import Scheduler

__all__ = ["Prefill"]


class Prefill:
    """Queues handle prefills (a mixin: the engine sets the attributes below)."""

    tree: RadixTree
    scheduler: Scheduler
    # and the job lifecycle's _start_decode and _fail (jobs.py)

    def _prefill(self, st: HandleState, *, keep_hidden: bool = False,
                 on_hidden: Any = None) -> PrefillTask:
        """Queue the prefill of ``st.tail``; when done, ``st`` moves to the new node."""
        parent = st.node
        self.tree.pin(parent)                 # NOTE: the parent stays resident meanwhile

        def done(task: PrefillTask, hidden: Tensor) -> None:
            self.tree.unpin(parent)
            node = self.tree.add_child(parent, task.tokens, task.pages,
                                       payload=hidden[-1].clone())
            task.pages = None
            if st.released:
                self.tree.free_unlocked(node)
            elif st.pinned:                   # the handle moves to the computed node
                self.tree.pin(node)
                self.tree.unpin(parent)
            else:
                self.tree.retain(node)
                self.tree.unretain(parent)
            st.node, st.tail, st.task = node, (), None
            if on_hidden is not None:
                on_hidden(hidden)
            waiters, st.waiters = st.waiters, []
            for job in waiters:
                job.waiting_on -= 1
                if job.waiting_on == 0 and not job.closed:
                    self._start_decode(job)

        def failed(err: BaseException) -> None:
            self.tree.unpin(parent)
            st.task = None
            waiters, st.waiters = st.waiters, []
            for job in waiters:
                self._fail(job, err)
            if on_hidden is not None:
                on_hidden(err)

        task = PrefillTask(parent=parent, tokens=st.tail, keep_hidden=keep_hidden,
                           on_done=done, on_error=failed)
        st.task = task
        self.scheduler.add_prefill(task)
        return task
