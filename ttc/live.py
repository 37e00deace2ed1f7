"""A search you can watch: the tree a strategy grows, rebuilt from its progress events.

Contract: :class:`LiveTree` turns a stream of :class:`~ttc.types.ProgressEvent` (what
``Pipeline(progress=...)`` delivers, and what a server streams) into a tree model:
nodes with their step text, tokens, score and status, the search step, live branches,
best score, tokens used against the budget, the chosen leaf and whether the budget cut
the search. :func:`render` draws the model as a rich renderable (header + tree), and
:class:`LiveView` shows it in a terminal while the search runs (``ttc solve --watch``)::

    events ──► LiveTree.apply ──► render(tree) ──► rich Live (terminal)
                                └─► to_json()  ──► anything else (a server, a test)

Status shown: ``live`` (open: may still be expanded), ``expanded`` (has children),
``pruned``, ``finished`` (terminal), and ``open`` for a node the search ended without
expanding (e.g. cut by the budget); the chosen leaf and its path are starred. Pruned leaves are folded into one line per
parent and a parent shows at most ``max_children`` other children, so a wide search
stays readable; the numbers of hidden nodes are written where they are folded.
Must NOT know: strategies, engines, verifiers; it reads events only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ttc.types import EventKind, NodeUpdate, ProgressEvent

STATUS_LABELS = {"open": "live", "expanded": "expanded", "terminal": "finished",
                 "pruned": "pruned"}
_STYLES = {"live": "cyan", "expanded": "blue", "finished": "green", "pruned": "grey50",
           "open": "yellow"}
_GLYPHS = {"live": "●", "expanded": "○", "finished": "■", "pruned": "✗", "open": "◌"}


@dataclass(slots=True)
class LiveNode:
    id: int
    parent: int | None
    depth: int
    text: str = ""
    tokens: int = 0
    status: str = "open"
    score: float | None = None
    answer: str | None = None
    cut_by_budget: bool = False
    children: list[int] = field(default_factory=list)

    def shown_status(self, done: bool = False) -> str:
        if done and self.status == "open":
            return "open"         # the search ended before expanding it
        return STATUS_LABELS.get(self.status, self.status)


class LiveTree:
    """The tree model built from progress events (thread-safe: apply and snapshot lock)."""

    def __init__(self, question: str = "", *, title: str = "",
                 budget_tokens: int | None = None) -> None:
        self.title = title
        self.nodes: dict[int, LiveNode] = {0: LiveNode(id=0, parent=None, depth=0,
                                                       text=question, status="expanded")}
        self.step = 0
        self.live = 0
        self.best_score: float | None = None
        self.note = ""
        self.generated_tokens = 0
        self.budget_tokens = budget_tokens
        self.chosen: int | None = None
        self.done = False
        self.budget_exhausted = False
        self.events = 0
        self._lock = threading.Lock()

    def apply(self, event: ProgressEvent) -> None:
        """Fold one event into the model."""
        with self._lock:
            self.events += 1
            self.step, self.live = event.step, event.live
            if event.best_score is not None:
                self.best_score = event.best_score
            if event.kind is EventKind.STEP and event.note:
                self.note = event.note
            self.generated_tokens = max(self.generated_tokens, event.generated_tokens)
            self.budget_tokens = event.budget_tokens
            if event.node is not None:
                self._upsert(event.node)
            if event.kind is EventKind.CHOSEN:
                self.done = True
                self.chosen = event.node.id if event.node is not None else None
                self.budget_exhausted = event.budget_exhausted

    def _upsert(self, update: NodeUpdate) -> None:
        node = self.nodes.get(update.id)
        if node is None:
            node = LiveNode(id=update.id, parent=update.parent, depth=update.depth)
            self.nodes[update.id] = node
            parent = self.nodes.get(update.parent) if update.parent is not None else None
            if parent is not None:
                parent.children.append(update.id)
                if parent.status == "open":
                    parent.status = "expanded"
        node.text, node.tokens, node.status = update.text, update.tokens, update.status
        node.score, node.answer = update.score, update.answer
        node.cut_by_budget = update.cut_by_budget

    def chosen_path(self) -> set[int]:
        path: set[int] = set()
        current = self.chosen
        while current is not None and current in self.nodes:
            path.add(current)
            current = self.nodes[current].parent
        return path

    def counts(self) -> dict[str, int]:
        out = {"live": 0, "expanded": 0, "finished": 0, "pruned": 0}
        for node in self.nodes.values():
            if node.parent is not None:
                status = node.shown_status(self.done)
                out[status] = out.get(status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The model as plain data (a server may send this instead of a picture)."""
        with self._lock:
            return {"step": self.step, "live": self.live, "best_score": self.best_score,
                    "generated_tokens": self.generated_tokens,
                    "budget_tokens": self.budget_tokens, "chosen": self.chosen,
                    "done": self.done, "budget_exhausted": self.budget_exhausted,
                    "nodes": [{"id": n.id, "parent": n.parent, "depth": n.depth,
                               "text": n.text, "tokens": n.tokens,
                               "status": n.shown_status(self.done), "score": n.score,
                               "answer": n.answer, "cut_by_budget": n.cut_by_budget}
                              for n in self.nodes.values()]}


def snippet(text: str, width: int) -> str:
    """One line of at most ``width`` characters (whitespace runs become one space)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def render(tree: LiveTree, *, max_children: int = 6, width: int = 100):
    """The model as a rich renderable: a header line, a budget bar and the tree.

    ``width`` is the console's: step text is cut so that each node stays one line.
    """
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    with tree._lock:       # a consistent picture while events keep arriving
        counts = tree.counts()
        path = tree.chosen_path()
        state = ("done" if tree.done else "searching") + (
            " · BUDGET EXHAUSTED" if tree.budget_exhausted else "")
        header = Text.assemble(
            (f"{tree.title} " if tree.title else "", "bold"),
            (state, "bold red" if tree.budget_exhausted else "bold"),
            f" · step {tree.step} · live {counts['live']} · finished {counts['finished']}"
            f" · pruned {counts['pruned']}"
            + (f" · left open {counts['open']}" if counts.get("open") else ""),
            f" · best {tree.best_score:.3f}" if tree.best_score is not None else "",
            f" · {tree.note}" if tree.note and not tree.done else "")
        budget = tree.budget_tokens
        used = Text(f"tokens {tree.generated_tokens:,}"
                    + (f" / {budget:,} budget" if budget else " (no token budget)"))
        bar_row = Table.grid(padding=(0, 1))
        bar_row.add_column()
        bar_row.add_column(width=30)
        bar_row.add_row(used, ProgressBar(total=float(budget or 1),
                                          completed=float(tree.generated_tokens
                                                          if budget else 0), width=30))
        root = Tree(Text(f"question: {snippet(tree.nodes[0].text, width - 12)}",
                         style="bold"))
        _add_children(root, tree, 0, path, max_children=max_children, width=width)
    return Group(header, bar_row, root)


def _label(node: LiveNode, *, chosen: bool, width: int, done: bool):
    from rich.text import Text

    # 4 columns of tree guides per depth, ~30 for the fixed fields, the answer if any.
    answer = f"  → {snippet(node.answer, 20)}" if node.answer is not None else ""
    if node.cut_by_budget:
        answer += "  ✂ cut by budget"
    text_width = max(12, width - 4 * node.depth - 30 - len(answer))
    status = node.shown_status(done)
    style = "bold yellow" if chosen else _STYLES.get(status, "")
    score = f"{node.score:.2f}" if node.score is not None else " –  "
    label = Text(f"{'★' if chosen else _GLYPHS.get(status, '?')} #{node.id} ", style=style)
    label.append(f"{status:<8} {score} {node.tokens:>4} tok  ", style=style)
    label.append(snippet(node.text, text_width),
                 style="grey50" if status == "pruned" and not chosen else "")
    if answer:
        label.append(answer, style="bold red" if node.cut_by_budget else "bold")
    return label


def _add_children(branch, tree: LiveTree, node_id: int, path: set[int], *,
                  max_children: int, width: int) -> None:
    # Iterative over the tree (deep searches), recursive only over what is shown.
    stack = [(branch, node_id)]
    while stack:
        shown, nid = stack.pop()
        kids = [tree.nodes[c] for c in tree.nodes[nid].children]
        folded = [k for k in kids if k.status == "pruned" and not k.children
                  and k.id not in path]
        rest = [k for k in kids if k not in folded]
        # The chosen path first, then finished, then live, best scores first.
        rest.sort(key=lambda k: (k.id not in path, k.status != "terminal",
                                 -(k.score if k.score is not None else -1.0), k.id))
        hidden = rest[max_children:]
        for kid in rest[:max_children]:
            sub = shown.add(_label(kid, chosen=kid.id in path, width=width, done=tree.done))
            if kid.children:
                stack.append((sub, kid.id))
        if folded:
            scores = [k.score for k in folded if k.score is not None]
            best = f", best score {max(scores):.2f}" if scores else ""
            shown.add(f"[grey50]✗ {len(folded)} pruned leaves{best}[/]")
        if hidden:
            shown.add(f"[grey50]… {len(hidden)} more children not shown[/]")


def render_text(tree: LiveTree, *, width: int = 120, **kw: Any) -> str:
    """The rendered view as plain text (tests, logs)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None,
                      force_terminal=False)
    console.print(render(tree, width=width, **kw))
    return console.file.getvalue()  # type: ignore[attr-defined]


class LiveView:
    """Shows a :class:`LiveTree` in a terminal while events arrive (rich ``Live``).

    ``callback`` is the progress callback to hand the pipeline; redraws are at most
    every ``refresh_s`` seconds (the last one on :meth:`close`, which leaves the final
    tree on screen, printed whole).
    """

    def __init__(self, question: str, *, console: Any = None, title: str = "",
                 budget_tokens: int | None = None, refresh_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.live import Live

        self.tree = LiveTree(question, title=title, budget_tokens=budget_tokens)
        self._console = console or Console(stderr=True)
        # NOTE: while live, a tree taller than the terminal is cut with an ellipsis (rich
        # cannot move the cursor above the screen); close() then prints it whole, once.
        self._live = Live(self._render(), console=self._console, auto_refresh=False,
                          vertical_overflow="ellipsis", transient=True)
        self._refresh_s, self._clock = refresh_s, clock
        self._last = float("-inf")
        self._started = False

    def callback(self, event: ProgressEvent) -> None:
        # NOTE: started at the first event, so what prints before the search (a model
        # being converted or loaded) is not mixed into the live area.
        if not self._started:
            self._started = True
            self._live.start()
        self.tree.apply(event)
        now = self._clock()
        if event.kind is EventKind.CHOSEN or now - self._last >= self._refresh_s:
            self._last = now
            self._live.update(self._render(), refresh=True)

    def close(self) -> None:
        if self._started:
            self._live.stop()
        self._console.print(self._render())

    def _render(self):
        return render(self.tree, width=self._console.width)
