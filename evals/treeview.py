"""``ttc tree RESULTS.jsonl --problem ID``: draw a stored search tree with its scores.

Contract: reads the record of one problem from a results file written with
``save_tree=true``, rebuilds the tree with :meth:`ttc.tree.SearchTree.from_json`, and
draws it top-down (root at the top, one row per depth) with matplotlib (Agg) into a PNG
or SVG. Leaves are spread evenly; a parent sits above the middle of its children.
Colour = the node's verifier score (grey: unscored); marker = status (circle open or
expanded, square terminal, x pruned); a terminal node's answer is written below it.
The image is written atomically (no half-written or stray file when drawing fails).
Must NOT know: which strategy grew the tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttc.atomic import write_atomic
from ttc.evals.runner import read_results
from ttc.registry import ConfigError
from ttc.tree import NodeStatus, SearchTree

_MARKERS = {NodeStatus.OPEN: "o", NodeStatus.EXPANDED: "o", NodeStatus.TERMINAL: "s",
            NodeStatus.PRUNED: "X"}


def find_record(path: str | Path, problem: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results file {str(path)!r} does not exist.")
    records = read_results(path)
    for rec in records:
        if str(rec["id"]) == str(problem):
            return rec
    ids = [str(r["id"]) for r in records[:8]]
    raise ConfigError(f"problem {problem!r} is not in {path}; ids include: "
                      f"{', '.join(ids)}{'…' if len(records) > 8 else ''}.")


def layout(tree: SearchTree) -> dict[int, tuple[float, float]]:
    """x: leaves in depth-first order at 0, 1, 2, ...; parents centred; y: -depth."""
    pos: dict[int, tuple[float, float]] = {}
    next_x = 0.0
    # Iterative post-order so deep trees do not hit the recursion limit.
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        node_id, visited = stack.pop()
        node = tree[node_id]
        if not node.children:
            pos[node_id] = (next_x, -float(node.depth))
            next_x += 1.0
        elif visited:
            xs = [pos[c][0] for c in node.children]
            pos[node_id] = ((min(xs) + max(xs)) / 2, -float(node.depth))
        else:
            stack.append((node_id, True))
            stack.extend((c, False) for c in reversed(node.children))
    return pos


def draw_tree(record: dict[str, Any], out: str | Path, *, title: str | None = None):
    """Draw the record's tree into ``out`` (.png or .svg); return the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"tree output {str(out)!r} must end in .png or .svg.")
    if record.get("error"):
        raise ConfigError(f"problem {record['id']!r} failed ({record['error']}), so it has no "
                          f"tree; rerun the eval with retry_failed=true.")
    if not record.get("tree"):
        raise ConfigError(f"problem {record['id']!r} has no stored tree; rerun the eval with "
                          f"save_tree=true (and a strategy with keep_tree=true).")
    tree = SearchTree.from_json(record["tree"])
    graph = tree.to_networkx()
    pos = layout(tree)
    width = min(40.0, max(6.0, 0.25 * (1 + max(x for x, _ in pos.values()))))
    height = min(30.0, max(3.0, 0.9 * (1 + max(-y for _, y in pos.values()))))
    fig, ax = plt.subplots(figsize=(width, height))
    segments = [(pos[u], pos[v]) for u, v in graph.edges]
    ax.add_collection(LineCollection(segments, colors="#999999", linewidths=0.8, zorder=1))
    cmap = plt.get_cmap("viridis")
    scatter = None
    for status, marker in _MARKERS.items():
        ids = [n.id for n in tree if n.status is status]
        if not ids:
            continue
        scored = [i for i in ids if tree[i].score is not None]
        unscored = [i for i in ids if tree[i].score is None]
        if scored:
            scatter = ax.scatter([pos[i][0] for i in scored], [pos[i][1] for i in scored],
                                 c=[tree[i].score for i in scored], cmap=cmap, vmin=0, vmax=1,
                                 marker=marker, s=60, edgecolors="black", linewidths=0.4,
                                 zorder=2, label=status.value)
        if unscored:
            ax.scatter([pos[i][0] for i in unscored], [pos[i][1] for i in unscored],
                       color="#cccccc", marker=marker, s=60, edgecolors="black",
                       linewidths=0.4, zorder=2,
                       label=None if scored else status.value)
    small = len(tree) <= 120
    for node in tree:
        x, y = pos[node.id]
        if small and node.score is not None:
            ax.annotate(f"{node.score:.2f}", (x, y), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=6)
        if node.status is NodeStatus.TERMINAL and node.answer is not None:
            ax.annotate(str(node.answer)[:12], (x, y), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=6, color="#aa0000")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="verifier score", fraction=0.03)
    ax.set_ylabel("depth (steps)")
    ax.set_xticks([])
    ax.autoscale()
    ax.margins(0.05, 0.15)
    ax.legend(loc="upper right", fontsize=7)
    gold = record.get("gold")
    ax.set_title(title or (f"problem {record['id']} · {record.get('strategy', '')} · "
                           f"answer {record.get('answer')} · gold {gold} · "
                           f"{'correct' if record.get('correct') else 'wrong'} · "
                           f"{len(tree)} nodes"), fontsize=9)
    fig.tight_layout()
    if out.is_dir():
        raise ConfigError(f"tree output {str(out)!r} is a folder; name a .png or .svg file.")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda fh: fig.savefig(fh, dpi=110, format=out.suffix.lower()[1:]))
    return fig
