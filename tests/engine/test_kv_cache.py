"""Radix tree and page pool accounting under random insert / pin / unpin / release / evict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc.engine.native.kv_cache import KVCacheFull, PagePool, RadixTree

PS = 4


def _insert(tree: RadixTree, tokens: list[int]):
    """Match the longest cached prefix, then add the rest as a child (pinned)."""
    node = tree.match(tokens)
    tree.pin(node)                      # keep the parent resident while allocating
    try:
        rest = tokens[node.end:]
        if not rest:
            tree.pin(node)
            return node
        n_pages = -(-(node.end + len(rest)) // PS) - node.end // PS
        pages = tree.pool.alloc(n_pages)
        child = tree.add_child(node, rest, pages)
        tree.pin(child)
        return child
    finally:
        tree.unpin(node)


ops = st.lists(st.tuples(st.sampled_from(["insert", "extend", "pin", "unpin", "release",
                                          "evict"]),
                         st.integers(0, 10**6)), min_size=1, max_size=60)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_random_operations_keep_invariants(seq):
    pool = PagePool(num_pages=40, page_size=PS)
    tree = RadixTree(pool)
    handles = []          # [node, pinned]
    for op, r in seq:
        live = [h for h in handles if h[0].alive]
        try:
            if op == "insert" or (op == "extend" and not live):
                base = [r % 3, (r // 3) % 3]            # few distinct prefixes: sharing
                tokens = base + [(r >> k) % 5 for k in range(2 + r % 9)]
                handles.append([_insert(tree, tokens), True])
            elif op == "extend":
                h = live[r % len(live)]
                toks = tree.tokens_of(h[0]) + [r % 7 for _ in range(1 + r % 6)]
                handles.append([_insert(tree, toks), True])
            elif op == "pin" and live:
                h = live[r % len(live)]
                if not h[1]:
                    tree.unretain(h[0])
                    tree.pin(h[0], value=(r % 10) / 10)
                    h[1] = True
            elif op == "unpin" and live:
                h = live[r % len(live)]
                if h[1]:
                    tree.unpin(h[0], value=(r % 10) / 10)
                    tree.retain(h[0])
                    h[1] = False
            elif op == "release" and handles:
                h = handles.pop(r % len(handles))
                if h[0].alive:
                    before = pool.num_used
                    if h[1]:
                        tree.unpin(h[0])
                    else:
                        tree.unretain(h[0])
                    freed = tree.free_unlocked(h[0])
                    assert pool.num_used == before - freed
                    if h[0].lock == 0 and h[0].retained == 0 and not h[0].children:
                        assert not h[0].alive and freed > 0   # the page count falls
            elif op == "evict":
                tree.evict(1 + r % 10)
        except KVCacheFull as err:
            assert "backend.kv_memory_gb" in str(err)
        tree.check_invariants()
        for node, pinned in handles:
            if pinned:
                # a pinned sequence is never evicted: its whole path is alive and owned
                assert node.alive
                cur = node
                while cur is not tree.root:
                    assert cur.alive and all(pool.rc[p] == 1 for p in cur.pages)
                    cur = cur.parent
    # releasing everything returns every page
    for node, pinned in handles:
        if node.alive:
            if pinned:
                tree.unpin(node)
            else:
                tree.unretain(node)
            tree.free_unlocked(node)
    tree.evict(pool.num_pages)
    tree.check_invariants()
    assert pool.num_used == 0


def test_eviction_takes_lowest_value_then_least_recent():
    pool = PagePool(num_pages=6, page_size=PS)
    tree = RadixTree(pool)
    a = _insert(tree, [1, 1, 1, 1])
    b = _insert(tree, [2, 2, 2, 2])
    c = _insert(tree, [3, 3, 3, 3])
    d = _insert(tree, [4, 4, 4, 4])
    tree.unpin(a, value=0.9)
    tree.unpin(b, value=0.1)
    tree.unpin(c)                       # no value: lowest
    tree.unpin(d, value=0.9)
    tree.touch(a)                       # a used more recently than d
    tree.evict(1)
    assert not c.alive and b.alive
    tree.evict(1)
    assert not b.alive
    tree.evict(1)
    assert not d.alive and a.alive
    tree.check_invariants()


def test_full_pool_evicts_unpinned_then_names_the_setting():
    pool = PagePool(num_pages=3, page_size=PS)
    tree = RadixTree(pool)
    a = _insert(tree, [1] * 8)                     # 2 pages
    tree.unpin(a)
    b = _insert(tree, [2] * 8)                     # evicts a
    assert not a.alive and b.alive
    assert pool.num_used == 2
    with pytest.raises(KVCacheFull, match="backend.kv_memory_gb"):
        _insert(tree, [3] * 8)                     # b is pinned: nothing to evict
    assert b.alive
    tree.check_invariants()


def test_split_keeps_pages_and_locks():
    pool = PagePool(num_pages=10, page_size=PS)
    tree = RadixTree(pool)
    a = _insert(tree, list(range(10)))             # 3 pages, last partial
    b = _insert(tree, list(range(6)) + [99, 98])   # matches 6 -> split at position 4
    assert a.start == 4 and a.parent.end == 4 and b.parent is a.parent
    assert len(a.parent.pages) == 1 and len(a.pages) == 2
    tree.check_invariants()
    assert tree.tokens_of(a) == list(range(10))
    assert tree.tokens_of(b) == list(range(6)) + [99, 98]


def test_page_bookkeeping_grows_with_pages_used_not_with_the_pool():
    pool = PagePool(num_pages=10**12, page_size=PS)     # a list of 10**12 counts: ~8 TB
    assert pool.alloc(3) == [0, 1, 2]
    assert len(pool.rc) == 3 and pool.num_used == 3 and pool.num_free == 10**12 - 3
    pool.free([1])
    pool.free([0])
    assert pool.alloc(3) == [0, 1, 3]                   # lowest free ids first
    assert len(pool.rc) == 4 and pool.num_used == 4
    pool.check_invariants(expected_refs={0: 1, 1: 1, 2: 1, 3: 1})
    with pytest.raises(AssertionError, match="owners"):
        pool.check_invariants(expected_refs={0: 1, 1: 1, 2: 1})


def test_lazy_pool_keeps_the_full_pool_error_and_exact_counts():
    pool = PagePool(num_pages=5, page_size=PS)
    pages = pool.alloc(5)
    assert pages == [0, 1, 2, 3, 4] and pool.num_free == 0
    with pytest.raises(KVCacheFull, match="1 more pages are needed, 0 are free"):
        pool.alloc(1)
    pool.free(pages[1:3])
    assert pool.num_free == 2 and pool.alloc(2) == [1, 2]
    pool.check_invariants()


def test_windows_measure_the_most_pages_used_while_open():
    pool = PagePool(num_pages=50, page_size=PS)
    held = pool.alloc(4)                                # in use before the window opens
    first = pool.open_window()
    pages = pool.alloc(6)                               # 10 used
    pool.free(pages)                                    # back to 4
    second = pool.open_window()
    more = pool.alloc(2)                                # 6 used
    assert pool.close_window(second) == 6               # opened at 4, rose to 6
    assert pool.close_window(first) == 10
    third = pool.open_window()
    pool.free(more + held)
    assert pool.close_window(third) == 6                # nothing allocated: where it began
    assert pool.peak_used == 10                         # the all-time mark is unchanged
    with pytest.raises(KeyError):
        pool.close_window(first)                        # a window closes once
