"""Paged KV memory and the radix tree of cached token sequences (the engine's accounting).

Contract: :class:`PagePool` hands out fixed-size pages of a preallocated KV tensor and
counts references; :class:`RadixTree` maps token-id sequences to the pages holding
their keys and values, shares common prefixes, keeps pinned sequences resident and
evicts the rest on demand. Neither runs a model: the runner writes into pages chosen
here.

Layout. Each tree node owns a span of tokens ``[start, end)`` of its sequence and the
pages covering positions ``[floor(start / page_size) * page_size, end)``. A node always
begins on a page of its own: when its parent ends mid-page, the node's first page starts
as a copy of the parent's partial last page (two sequences never append into one page)::

    page_size = 4
    positions      0  1  2  3 | 4  5  6  .        node A = prompt, tokens [0, 7)
    node A pages   [ p0      ] [ p1     .]        p1 partly filled (3 of 4)
                                   \\
    node B (child, [7, 9))          [ p2 = copy of p1's 4,5,6 + 7 | p3: 8 . . . ]
    node C (child, [7, 8))          [ p4 = copy of p1's 4,5,6 + 7 ]

    page table of a sequence ending at node N =
        full pages of every ancestor (a partial last page is replaced by the child's copy)
        + all pages of N

Reference counts and locks::

    rc(page)      = number of owners (tree nodes + running branches) listing the page
    lock(node)    = pinned handles at the node or anywhere below it
    Invariants:   free pages have rc == 0; sum(rc) == pages listed by owners;
                  used pages + free pages == num_pages (pages never handed out
                  are free without bookkeeping: see PagePool);
                  lock(node) == own pins + sum(lock(child));
                  a node with lock > 0 is never evicted (so a pinned page never is).

Release (:meth:`RadixTree.free_unlocked`): a released handle's node, then each ancestor,
is freed at once while it is unlocked, has no children and is not *retained* (an
unpinned handle kept as cache). Retained and other unlocked nodes stay until evicted.

Eviction (when :meth:`PagePool.alloc` finds too few free pages): unlocked leaves are
removed, lowest value first (``None`` counts as lowest), then least recently used; a
parent whose last child went becomes a leaf and joins the candidates. When nothing more
can be evicted, :class:`KVCacheFull` names the setting to raise.

Lookup and eviction cost: a node's children are indexed by their first token
(``RadixNode.index``; siblings may share a first token, since spans are cut only at page
boundaries, so each key holds a short list), and the tree keeps the set of evictable
leaves (alive, unlocked, childless) up to date as locks, children and nodes change, so
neither a match nor an eviction walks the whole tree.
Must NOT know: models, sampling, text, rewards, strategies.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence


class KVCacheFull(MemoryError):
    """The KV pool cannot hold what is pinned plus what is running."""


class PagePool:
    """Fixed-size pages with reference counts; the bytes live in the runner's KV tensor.

    ``alloc`` never returns a page still referenced and returns the lowest free ids
    first (a fresh sequence's pages are consecutive: cheap views); ``free`` returns
    pages whose count falls to zero. ``peak_used`` is the high-water mark of used pages;
    :meth:`open_window` / :meth:`close_window` measure the most pages used over a span
    of time (one problem of an eval).

    Bookkeeping grows with the pages ever handed out, not with ``num_pages``, so a
    pool sized for a large ``kv_memory_gb`` costs nothing until it is used::

        page ids   0 ........................ len(rc)-1 | len(rc) ........ num_pages-1
                   touched: rc[p] > 0 (used), or          never handed out: free,
                   rc[p] == 0 and p in the free heap      no bookkeeping at all

    NOTE: every id in the free heap is below ``len(rc)``, so the lowest free page is the
    heap's top when the heap is not empty, else ``len(rc)``.
    """

    def __init__(self, *, num_pages: int, page_size: int, setting: str = "backend.kv_memory_gb",
                 page_bytes: int = 0) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"the KV pool needs num_pages >= 1 and page_size >= 1; got "
                             f"{num_pages} and {page_size}.")
        self.num_pages = num_pages
        self.page_size = page_size
        self.setting = setting
        self.page_bytes = page_bytes     # bytes of one page in the KV tensor (0: not given)
        self.rc: list[int] = []          # reference counts of the pages ever handed out
        self._free: list[int] = []       # heap of freed ids below len(rc)
        self.peak_used = 0
        self.evictor: Callable[[int], int] | None = None
        # Open measurement windows: id -> most pages used since it opened. Callers of
        # open/close_window need not hold the engine's lock, hence a lock of their own.
        self._windows: dict[int, int] = {}
        self._window_lock = threading.Lock()
        self._window_ids = itertools.count()

    @property
    def num_free(self) -> int:
        return self.num_pages - len(self.rc) + len(self._free)

    @property
    def num_used(self) -> int:
        return len(self.rc) - len(self._free)

    def alloc(self, n: int) -> list[int]:
        """``n`` fresh pages with rc 1, evicting cached sequences if needed."""
        if n <= 0:
            return []
        if self.num_free < n and self.evictor is not None:
            self.evictor(n - self.num_free)
        if self.num_free < n:
            raise KVCacheFull(
                f"the KV cache is full: {n} more pages are needed, {self.num_free} are free "
                f"and nothing else can be evicted ({self.num_pages} pages of {self.page_size} "
                f"tokens); raise {self.setting} or keep fewer branches pinned.")
        pages = []
        for _ in range(n):
            if self._free:
                p = heapq.heappop(self._free)
                self.rc[p] = 1
            else:                            # NOTE: the lowest never-used id (see above)
                p = len(self.rc)
                self.rc.append(1)
            pages.append(p)
        used = self.num_used
        self.peak_used = max(self.peak_used, used)
        if self._windows:
            with self._window_lock:
                for wid, peak in self._windows.items():
                    if used > peak:
                        self._windows[wid] = used
        return pages

    def ref(self, pages: Sequence[int]) -> None:
        for p in pages:
            assert p < len(self.rc) and self.rc[p] > 0, f"page {p} is free"
            self.rc[p] += 1

    def free(self, pages: Sequence[int]) -> None:
        """Drop one reference to each page; pages reaching zero return to the pool."""
        for p in pages:
            assert p < len(self.rc) and self.rc[p] > 0, f"page {p} freed twice"
            self.rc[p] -= 1
            if self.rc[p] == 0:
                heapq.heappush(self._free, p)

    def open_window(self) -> int:
        """Start measuring the most pages in use (all owners) from now on; returns its id."""
        with self._window_lock:
            wid = next(self._window_ids)
            self._windows[wid] = self.num_used
            return wid

    def close_window(self, wid: int) -> int:
        """The most pages in use at any moment since :meth:`open_window` returned ``wid``."""
        with self._window_lock:
            return self._windows.pop(wid)

    def check_invariants(self, *, expected_refs: dict[int, int] | None = None) -> None:
        free = set(self._free)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert len(self.rc) <= self.num_pages, "more pages handed out than the pool has"
        for p in range(len(self.rc)):
            assert (self.rc[p] == 0) == (p in free), f"page {p}: rc {self.rc[p]} vs free list"
            assert self.rc[p] >= 0
        assert all(p < len(self.rc) for p in free), "a never-used page is on the free list"
        if expected_refs is not None:
            assert all(p < len(self.rc) for p, n in expected_refs.items() if n), (
                "an owner lists a page that was never handed out")
            for p in range(len(self.rc)):
                assert self.rc[p] == expected_refs.get(p, 0), (
                    f"page {p}: rc {self.rc[p]}, owners {expected_refs.get(p, 0)}")


@dataclass(eq=False)
class RadixNode:
    """A span of tokens ``[start, end)`` of a cached sequence and the pages holding it."""

    parent: "RadixNode | None"
    tokens: tuple[int, ...]
    start: int
    pages: list[int]
    children: list["RadixNode"] = field(default_factory=list)
    index: dict[int, list["RadixNode"]] = field(default_factory=dict)   # first token -> children
    lock: int = 0              # pinned handles here or below
    pins: int = 0              # pinned handles at this node exactly
    retained: int = 0          # unpinned handles kept as cache here (evictable, not freed)
    value: float | None = None
    last_access: int = 0
    payload: object = None     # the runner's data for the last token (a hidden state)
    alive: bool = True

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def full_pages(self, page_size: int) -> list[int]:
        """Pages holding no position at or past ``end`` minus a partial last page."""
        return self.pages[: self.end // page_size - self.start // page_size]


class RadixTree:
    """Cached token sequences sharing prefixes; see the module docstring."""

    def __init__(self, pool: PagePool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self.root = RadixNode(parent=None, tokens=(), start=0, pages=[])
        self.root.lock = 1 << 60      # NOTE: the root is never evicted
        self._clock = itertools.count(1)
        self._evictable: set[RadixNode] = set()      # alive, unlocked, childless, not the root
        pool.evictor = self.evict

    # -- structure helpers (every change of children or locks goes through these) -----
    def _link(self, parent: RadixNode, child: RadixNode, *, at: int | None = None) -> None:
        if at is None:
            parent.children.append(child)
        else:
            parent.children.insert(at, child)
        parent.index.setdefault(child.tokens[0], []).append(child)
        self._evictable.discard(parent)
        self._update(child)

    def _unlink(self, parent: RadixNode, child: RadixNode) -> int:
        at = parent.children.index(child)
        del parent.children[at]
        bucket = parent.index[child.tokens[0]]
        bucket.remove(child)
        if not bucket:
            del parent.index[child.tokens[0]]
        self._update(parent)
        return at

    def _update(self, node: RadixNode) -> None:
        if node is self.root:
            return
        if node.alive and node.lock == 0 and not node.children:
            self._evictable.add(node)
        else:
            self._evictable.discard(node)

    # -- lookup and insertion ---------------------------------------------------------
    def touch(self, node: RadixNode) -> None:
        t = next(self._clock)
        while node is not None:
            node.last_access = t
            node = node.parent

    def match(self, tokens: Sequence[int], *, limit: int | None = None) -> RadixNode:
        """The deepest node whose sequence is a prefix of ``tokens[:limit]``.

        A match that ends inside a node splits it at the last page boundary before the
        match end (spans start on page boundaries or copy pages), when that boundary lies
        inside the node.
        """
        tokens = tuple(tokens[:limit] if limit is not None else tokens)
        node = self.root
        while node.end < len(tokens):
            best, best_len = None, 0
            for child in node.index.get(tokens[node.end], ()):
                m = _common_len(child.tokens, tokens[node.end:])
                if m > best_len:
                    best, best_len = child, m
            if best is None:
                break
            if best_len == len(best.tokens):
                node = best
                continue
            cut = (best.start + best_len) // self.page_size * self.page_size
            if cut > best.start and cut // self.page_size > best.start // self.page_size:
                node = self.split(best, cut)
            break
        self.touch(node)
        return node

    def split(self, node: RadixNode, at: int) -> RadixNode:
        """Cut ``node`` at sequence position ``at`` (a page boundary); return the upper part."""
        ps = self.page_size
        assert at % ps == 0 and node.start < at < node.end
        k = at // ps - node.start // ps                 # pages that go to the upper part
        upper = RadixNode(parent=node.parent, tokens=node.tokens[: at - node.start],
                          start=node.start, pages=node.pages[:k], lock=node.lock,
                          value=node.value, last_access=node.last_access)
        parent = node.parent
        pos = self._unlink(parent, node)
        node.tokens = node.tokens[at - node.start:]
        node.start = at
        node.pages = node.pages[k:]
        self._link(parent, upper, at=pos)
        node.parent = upper
        self._link(upper, node)
        return upper

    def add_child(self, parent: RadixNode, tokens: Sequence[int], pages: list[int], *,
                  payload: object = None) -> RadixNode:
        """Insert a computed span under ``parent``, taking over ``pages`` (rc 1 each).

        If an identical child exists, its pages are kept, ``pages`` are freed, and the
        existing child is returned (its payload filled in if it had none).
        """
        tokens = tuple(tokens)
        ps = self.page_size
        expect = -(-(parent.end + len(tokens)) // ps) - parent.end // ps
        assert len(pages) == expect, f"{len(pages)} pages for {len(tokens)} tokens, want {expect}"
        for child in parent.index.get(tokens[0], ()) if tokens else ():
            if child.tokens == tokens:
                self.pool.free(pages)
                if child.payload is None:
                    child.payload = payload
                self.touch(child)
                return child
        node = RadixNode(parent=parent, tokens=tokens, start=parent.end, pages=list(pages),
                    payload=payload)
        self._link(parent, node)
        self.touch(node)
        return node

    def page_table(self, node: RadixNode) -> list[int]:
        """Pages of the whole sequence ending at ``node`` (see the module docstring)."""
        parts = []
        cur = node
        parts.append(cur.pages)
        cur = cur.parent
        while cur is not None and cur is not self.root:
            parts.append(cur.full_pages(self.page_size))
            cur = cur.parent
        return [p for part in reversed(parts) for p in part]

    def tokens_of(self, node: RadixNode) -> list[int]:
        parts = []
        while node is not None:
            parts.append(node.tokens)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    # -- pins -------------------------------------------------------------------------
    def pin(self, node: RadixNode, *, value: float | None = None) -> None:
        node.pins += 1
        if value is not None:
            node.value = value
        cur = node
        while cur is not None:
            cur.lock += 1
            if cur.lock == 1:
                self._evictable.discard(cur)
            cur = cur.parent

    def unpin(self, node: RadixNode, *, value: float | None = None) -> None:
        """Drop one pin; the node stays cached (evictable once nothing below is pinned)."""
        assert node.pins > 0, "unpin without a pin"
        node.pins -= 1
        if value is not None:
            node.value = value
        cur = node
        while cur is not None:
            cur.lock -= 1
            if cur.lock == 0:
                self._update(cur)
            cur = cur.parent

    def retain(self, node: RadixNode) -> None:
        """Mark an unpinned handle at ``node`` as kept: evictable, but not freed on release."""
        node.retained += 1

    def unretain(self, node: RadixNode) -> None:
        assert node.retained > 0, "unretain without retain"
        node.retained -= 1

    def free_unlocked(self, node: RadixNode) -> int:
        """Free ``node`` and its ancestors while each is unlocked, unretained and childless.

        This is what ``release`` does: KV that no pinned (or kept) handle shares goes at
        once. Returns pages freed.
        """
        freed = 0
        while (node is not self.root and node.alive and node.lock == 0
               and node.retained == 0 and not node.children):
            parent = node.parent
            freed += self._drop(node)
            node = parent
        return freed

    # -- eviction ---------------------------------------------------------------------
    def evict(self, num_pages: int) -> int:
        """Free at least ``num_pages`` pages by removing unlocked leaves; return pages freed."""
        heap = [(_value_key(n), n.last_access, id(n), n) for n in self._evictable]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_pages:
            _, _, _, node = heapq.heappop(heap)
            if not node.alive or node.children or node.lock > 0:
                continue
            parent = node.parent
            freed += self._drop(node)
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (_value_key(parent), parent.last_access, id(parent), parent))
        return freed

    def _drop(self, node: RadixNode) -> int:
        """Remove one unlocked node (its children are removed by the caller first or after)."""
        assert node.lock == 0 and node is not self.root
        node.alive = False
        self._evictable.discard(node)
        parent = node.parent
        if node in parent.children:
            self._unlink(parent, node)
        n = len(node.pages)
        self.pool.free(node.pages)
        node.pages = []
        node.payload = None
        return n

    def nodes(self) -> list[RadixNode]:
        out, stack = [], list(self.root.children)
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children)
        return out

    def cached_pages(self) -> int:
        return sum(len(n.pages) for n in self.nodes())

    def check_invariants(self, *, extra_refs: Sequence[Sequence[int]] = ()) -> None:
        """Check locks, spans and page counts; ``extra_refs``: page lists of running owners."""
        ps = self.page_size
        refs: dict[int, int] = {}
        for owner in extra_refs:
            for p in owner:
                refs[p] = refs.get(p, 0) + 1
        for n in self.nodes():
            assert n.alive, "a dead node is still in the tree"
            assert n.parent is not None and n in n.parent.children
            assert n.start == n.parent.end, "a child must start where its parent ends"
            assert len(n.tokens) > 0, "empty span"
            assert len(n.pages) == -(-n.end // ps) - n.start // ps, "pages do not cover the span"
            assert n.lock == n.pins + sum(c.lock for c in n.children), "lock != pins below"
            assert n.pins >= 0 and n.lock >= 0 and n.retained >= 0
            for p in n.pages:
                refs[p] = refs.get(p, 0) + 1
        evictable = {n for n in self.nodes() if n.lock == 0 and not n.children}
        assert evictable == self._evictable, "the evictable-leaf set is stale"
        for n in self.nodes():
            assert {c.tokens[0] for c in n.children} == set(n.index), "child index keys"
            assert sorted(map(id, n.children)) == sorted(
                id(c) for b in n.index.values() for c in b), "child index members"
        top = self.root.lock - (1 << 60)
        assert top == self.root.pins + sum(c.lock for c in self.root.children), "root lock"
        self.pool.check_invariants(expected_refs=refs)


def _value_key(node: RadixNode) -> float:
    return float("-inf") if node.value is None else node.value


def _common_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
