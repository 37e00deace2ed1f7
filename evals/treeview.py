"""``ttc tree RESULTS --problem ID -o FILE``: a stored search tree as a picture or a page.

Contract: reads one problem's record from a results file written with ``save_tree=true``
(or a tree JSON written by ``ttc solve --tree``), rebuilds the tree with
:meth:`ttc.tree.SearchTree.from_json`, and writes

- ``.png`` / ``.svg`` (:func:`draw_tree`, matplotlib Agg): root at the top, depth 0, 1, 2
  going down, one row per depth; leaves spread evenly, a parent above the middle of its
  children. Colour = the node's verifier score (grey: unscored); marker = status
  (circle live, square finished, x pruned); a finished node's answer is written below
  it, green when it matches the gold answer and red when not; the chosen path is drawn
  thick orange; a search the budget cut says so in a red box, and each step it cut short
  has a dashed red ring. Labels that would
  overprint a neighbour are left out (the chosen path's first), and the chosen path's
  step text is listed under the tree.
- ``.html`` (:func:`write_tree_html`): ONE self-contained page (inline CSS and JS, no
  network at view time): a collapsible tree with each node's step text, tokens, score
  and status, the chosen path highlighted and opened, budget exhaustion marked (the
  search in a banner, each step the budget cut short with a badge), and a
  search box over the nodes' text and answers (``tree.html#search=TEXT`` opens with a
  search).

Files are written atomically (no half-written or stray file when drawing fails).
Must NOT know: which strategy grew the tree.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ttc.atomic import write_atomic, write_text_atomic
from ttc.evals.grading import is_correct
from ttc.evals.runner import read_results
from ttc.registry import ConfigError
from ttc.tree import NodeStatus, SearchTree

FORMATS = (".png", ".svg", ".html")
_MARKERS = {NodeStatus.OPEN: "o", NodeStatus.EXPANDED: "o", NodeStatus.TERMINAL: "s",
            NodeStatus.PRUNED: "X"}
_STATUS_NAMES = {NodeStatus.OPEN: "live", NodeStatus.EXPANDED: "expanded",
                 NodeStatus.TERMINAL: "finished", NodeStatus.PRUNED: "pruned"}
CORRECT_COLOR, WRONG_COLOR, CHOSEN_COLOR = "#1a9641", "#d7191c", "#ff8c00"


def find_record(path: str | Path, problem: str | None) -> dict[str, Any]:
    """The record of ``problem`` in a results file, or a ``ttc solve --tree`` JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results file {str(path)!r} does not exist.")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err.msg}).") from err
        if not isinstance(data, dict) or "nodes" not in data:
            raise ConfigError(f"{path} is not a search tree (written by ttc solve --tree); "
                              f"a results file ends in .jsonl.")
        chosen = data.get("chosen")
        answer = next((n.get("answer") for n in data["nodes"]
                       if chosen is not None and n.get("id") == chosen), None)
        return {"id": problem or path.stem, "tree": data, "answer": answer,
                "budget_exhausted": data.get("budget_exhausted", False)}
    if problem is None:
        raise ConfigError(f"--problem is needed to pick a problem from {path}.")
    records = read_results(path)
    for rec in records:
        if str(rec["id"]) == str(problem):
            return rec
    ids = [str(r["id"]) for r in records[:8]]
    raise ConfigError(f"problem {problem!r} is not in {path}; ids include: "
                      f"{', '.join(ids)}{'…' if len(records) > 8 else ''}.")


def tree_of(record: dict[str, Any]) -> SearchTree:
    if record.get("error"):
        raise ConfigError(f"problem {record['id']!r} failed ({record['error']}), so it has no "
                          f"tree; rerun the eval with retry_failed=true.")
    if not record.get("tree"):
        raise ConfigError(f"problem {record['id']!r} has no stored tree; rerun the eval with "
                          f"save_tree=true (and a strategy with keep_tree=true).")
    try:
        return SearchTree.from_json(record["tree"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"problem {record['id']!r}: the stored tree cannot be read "
                          f"({err}).") from err


def budget_exhausted(record: dict[str, Any], tree: SearchTree) -> bool:
    return bool(record.get("budget_exhausted") or tree.budget_exhausted)


def answer_correct(record: dict[str, Any], tree: SearchTree) -> dict[int, bool | None]:
    """Each finished node's answer against the gold one (None: no gold or no answer)."""
    gold = record.get("gold")
    return {n.id: (is_correct(gold, n.answer) if gold is not None and n.answer is not None
                   else None)
            for n in tree if n.status is NodeStatus.TERMINAL}


def layout(tree: SearchTree) -> dict[int, tuple[float, float]]:
    """x: leaves in depth-first order at 0, 1, 2, ...; parents centred; y: depth (0 top).

    Two nodes of one depth are at least 1 apart: their subtrees' leaves are disjoint runs.
    """
    pos: dict[int, tuple[float, float]] = {}
    next_x = 0.0
    # Iterative post-order so deep trees do not hit the recursion limit.
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        node_id, visited = stack.pop()
        node = tree[node_id]
        if not node.children:
            pos[node_id] = (next_x, float(node.depth))
            next_x += 1.0
        elif visited:
            xs = [pos[c][0] for c in node.children]
            pos[node_id] = ((min(xs) + max(xs)) / 2, float(node.depth))
        else:
            stack.append((node_id, True))
            stack.extend((c, False) for c in reversed(node.children))
    return pos


def _title(record: dict[str, Any], tree: SearchTree) -> str:
    parts = [f"problem {record['id']}"]
    if record.get("strategy"):
        parts.append(str(record["strategy"]))
    if "answer" in record:
        answer = record.get("answer")
        parts.append(f"answer {answer}" if answer is not None else "no answer chosen")
    if record.get("gold") is not None:
        parts.append(f"gold {record['gold']}")
        parts.append("correct" if record.get("correct") else "wrong")
    parts.append(f"{len(tree)} nodes")
    if budget_exhausted(record, tree):
        parts.append("budget exhausted")
    return " · ".join(parts)


def _snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def draw_tree(record: dict[str, Any], out: str | Path, *, title: str | None = None):
    """Draw the record's tree into ``out`` (.png or .svg); return the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"tree output {str(out)!r} must end in .png or .svg.")
    tree = tree_of(record)
    graph = tree.to_networkx()
    pos = layout(tree)
    path = tree.chosen_path()
    on_path = set(path)
    correct = answer_correct(record, tree)
    leaves = 1 + max(x for x, _ in pos.values())
    depth = max(y for _, y in pos.values())
    steps = [tree[i] for i in path[1:] if tree[i].text.strip()][:12]
    width = min(48.0, max(7.0, 0.42 * leaves + 1.5))
    tree_height = min(24.0, max(2.5, 0.9 * (1 + depth)))
    text_height = 0.22 * (len(steps) + 1) if steps else 0.0
    # Inches, top down: title 0.3, budget banner 0.3, legend 0.35 a row (one row of 7
    # entries from 11 inches wide, else two of 4), the tree, step text.
    legend_cols = 7 if width >= 11 else 4
    top = 0.6 + 0.35 * (1 if legend_cols == 7 else 2)
    height = top + tree_height + 0.3 + text_height
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.75 / width, (text_height + 0.3) / height, 1 - 1.6 / width,
                       tree_height / height))
    segments = [(pos[u], pos[v]) for u, v in graph.edges]
    ax.add_collection(LineCollection(segments, colors="#999999", linewidths=0.8, zorder=1))
    chosen_edges = [(pos[u], pos[v]) for u, v in zip(path, path[1:])]
    if chosen_edges:
        ax.add_collection(LineCollection(chosen_edges, colors=CHOSEN_COLOR, linewidths=3.2,
                                         zorder=1.5))
    cmap = plt.get_cmap("viridis")
    scatter = None
    for status, marker in _MARKERS.items():
        ids = [n.id for n in tree if n.status is status]
        if not ids:
            continue
        scored = [i for i in ids if tree[i].score is not None]
        unscored = [i for i in ids if tree[i].score is None]
        edges = [CORRECT_COLOR if correct.get(i) else WRONG_COLOR
                 if correct.get(i) is False else "black" for i in scored]
        widths = [1.8 if correct.get(i) is not None else 0.4 for i in scored]
        if scored:
            scatter = ax.scatter([pos[i][0] for i in scored], [pos[i][1] for i in scored],
                                 c=[tree[i].score for i in scored], cmap=cmap, vmin=0, vmax=1,
                                 marker=marker, s=60, edgecolors=edges, linewidths=widths,
                                 zorder=2)
        if unscored:
            ax.scatter([pos[i][0] for i in unscored], [pos[i][1] for i in unscored],
                       color="#cccccc", marker=marker, s=60,
                       edgecolors=[CORRECT_COLOR if correct.get(i) else WRONG_COLOR
                                   if correct.get(i) is False else "black" for i in unscored],
                       linewidths=0.6, zorder=2)
    cut = [n.id for n in tree if n.cut_by_budget]
    if cut:
        ax.scatter([pos[i][0] for i in cut], [pos[i][1] for i in cut], s=170,
                   facecolors="none", edgecolors=WRONG_COLOR, linestyles="--", linewidths=1.0,
                   zorder=1.8)
    # Labels: the chosen path's first, then answers, then scores; one that would overprint
    # a label already placed is left out (colour still shows its score).
    labels = []
    order = sorted(tree, key=lambda n: (n.id not in on_path,
                                        n.status is not NodeStatus.TERMINAL, n.id))
    for node in order:
        x, y = pos[node.id]
        if node.status is NodeStatus.TERMINAL and node.answer is not None:
            ok = correct.get(node.id)
            labels.append(ax.annotate(
                _snippet(str(node.answer), 10), (x, y), textcoords="offset points",
                xytext=(0, -13), ha="center", va="top", fontsize=6.5,
                color=CORRECT_COLOR if ok else WRONG_COLOR if ok is False else "black"))
        if node.score is not None:
            labels.append(ax.annotate(f"{node.score:.2f}", (x, y), textcoords="offset points",
                                      xytext=(0, 7), ha="center", va="bottom", fontsize=6))
    ax.set_xlim(-0.7, leaves - 0.3)
    ax.set_ylim(depth + 0.6, -0.6)         # depth 0 at the top, going down
    ax.set_yticks(range(int(depth) + 1))
    ax.set_ylabel("depth (steps)")
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    _drop_overlapping(fig, labels)
    if scatter is not None:
        cax = fig.add_axes((1 - 0.7 / width, ax.get_position().y0, 0.12 / width,
                            ax.get_position().height))
        fig.colorbar(scatter, cax=cax, label="verifier score")
    handles = [Line2D([], [], marker="o", ls="", color="#bbbbbb", mec="black",
                      label="open / expanded"),
               Line2D([], [], marker="s", ls="", color="#bbbbbb", mec="black",
                      label="finished"),
               Line2D([], [], marker="X", ls="", color="#bbbbbb", mec="black", label="pruned"),
               Line2D([], [], marker="s", ls="", color="white", mec=CORRECT_COLOR, mew=1.8,
                      label="answer correct"),
               Line2D([], [], marker="s", ls="", color="white", mec=WRONG_COLOR, mew=1.8,
                      label="answer wrong"),
               Line2D([], [], color=CHOSEN_COLOR, lw=3, label="chosen path"),
               Line2D([], [], marker="o", ls="", ms=11, color="none", mec=WRONG_COLOR,
                      label="step cut by budget")]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=legend_cols,
              fontsize=7, frameon=False, borderaxespad=0.0)
    fig.text(0.5, 1 - 0.06 / height, title or _title(record, tree), fontsize=9,
             ha="center", va="top")
    if budget_exhausted(record, tree):
        ledger = record.get("ledger") or {}
        spent = ledger.get("generated_tokens")
        fig.text(0.5, 1 - 0.36 / height, "BUDGET EXHAUSTED: the token budget cut this search"
                 + (f" after {spent:,} tokens" if spent else ""), ha="center", va="top",
                 fontsize=8, color="white",
                 bbox={"facecolor": WRONG_COLOR, "edgecolor": "none", "pad": 2})
    if steps:
        lines = ["chosen path, step text:"] + [
            f"{i}. {_snippet(n.text, int(12 * width))}" for i, n in enumerate(steps, 1)]
        fig.text(0.06, 0.12 / fig.get_figheight(), "\n".join(lines), ha="left",
                 va="bottom", fontsize=7, family="monospace", linespacing=1.35)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda fh: fig.savefig(fh, dpi=110, format=out.suffix.lower()[1:]))
    return fig


def _drop_overlapping(fig, labels) -> None:
    """Hide each label whose box meets a label kept before it (``labels`` in priority)."""
    renderer = fig.canvas.get_renderer()
    kept = []
    for text in labels:
        box = text.get_window_extent(renderer).expanded(1.05, 1.0)
        if any(box.overlaps(other) for other in kept):
            text.set_visible(False)
        else:
            kept.append(box)


def label_boxes(fig) -> list[Any]:
    """Window boxes of the visible node labels of a figure drawn by :func:`draw_tree`."""
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    return [t.get_window_extent(renderer) for t in ax.texts
            if t.get_visible() and t.get_text() and not t.get_text().startswith("BUDGET")]


# -- the interactive page ---------------------------------------------------------------
def tree_page_data(record: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, as plain data (embedded in the page as JSON)."""
    tree = tree_of(record)
    correct = answer_correct(record, tree)
    on_path = set(tree.chosen_path())
    ledger = record.get("ledger") or {}
    return {
        "title": _title(record, tree), "question": tree.root.text,
        "answer": record.get("answer"), "gold": record.get("gold"),
        "correct": record.get("correct"),
        "budget_exhausted": budget_exhausted(record, tree),
        "generated_tokens": ledger.get("generated_tokens"),
        "chosen": tree.chosen,
        "nodes": [{"id": n.id, "parent": n.parent, "depth": n.depth, "text": n.text,
                   "tokens": n.num_tokens, "score": n.score, "status": _STATUS_NAMES[n.status],
                   "answer": n.answer, "correct": correct.get(n.id),
                   "chosen": n.id in on_path, "cut_by_budget": n.cut_by_budget,
                   "children": list(n.children)}
                  for n in tree],
    }


def write_tree_html(record: dict[str, Any], out: str | Path) -> Path:
    """Write the record's tree as one self-contained interactive HTML page."""
    out = Path(out)
    data = tree_page_data(record)
    # NOTE: "</" inside a <script> would end it early; JSON allows "<\/" for "</".
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = (_PAGE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__DATA__", payload))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.1em; margin: 0 0 .4em; }
#question { white-space: pre-wrap; background: #f4f4f4; padding: .5em; border-radius: 4px; }
#summary span { margin-right: 1.2em; }
.banner { background: #d7191c; color: white; padding: .3em .6em; border-radius: 4px;
          display: inline-block; font-weight: bold; margin: .4em 0; }
#tools { margin: .6em 0; position: sticky; top: 0; background: white; padding: .3em 0; }
#tools input { width: 22em; padding: .2em; }
ul.children { list-style: none; padding-left: 1.3em; margin: 0;
              border-left: 1px dotted #bbb; }
details > summary { cursor: pointer; padding: 1px 4px; border-radius: 3px; }
summary .meta { font-family: monospace; font-size: .9em; color: #555; }
summary .snip { color: #222; }
.st { display: inline-block; min-width: 5.2em; font-size: .8em; font-weight: bold;
      text-align: center; border-radius: 3px; color: white; margin-right: .4em; }
.st-live { background: #2c7fb8; } .st-expanded { background: #41b6c4; }
.st-finished { background: #555; }
.st-pruned { background: #aaa; }
.status-pruned > summary .snip { color: #999; }
.node.chosen > summary { background: #ffe6bf; border-left: 4px solid #ff8c00; }
.ans { font-weight: bold; margin-left: .5em; }
.ans.ok { color: #1a9641; } .ans.bad { color: #d7191c; }
.text { white-space: pre-wrap; font-family: monospace; font-size: .9em; background: #fafafa;
        border: 1px solid #eee; margin: 2px 0 4px 1.2em; padding: 4px; }
.hit > summary { outline: 2px solid #7b3294; }
.cut { color: #d7191c; font-weight: bold; margin-left: .5em; font-size: .85em; }
.legend span { margin-right: 1em; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div id="question"></div>
<div id="summary"></div>
<div id="tools">
  <input id="search" type="search" placeholder="search step text and answers">
  <span id="hits"></span>
  <button id="expand">expand all</button> <button id="collapse">collapse all</button>
  <button id="path">chosen path only</button>
</div>
<div class="legend"><span class="st st-live">live</span><span class="st st-expanded">expanded</span><span class="st st-finished">finished</span><span class="st st-pruned">pruned</span>
<span style="background:#ffe6bf;border-left:4px solid #ff8c00;padding:0 4px">chosen path</span>
<span class="ans ok">answer correct</span><span class="ans bad">answer wrong</span></div>
<div id="tree"></div>
<script id="tree-data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("tree-data").textContent);
const byId = new Map(data.nodes.map(n => [n.id, n]));
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function snippet(t, w) {
  const flat = t.split(/\\s+/).join(" ").trim();
  return flat.length <= w ? flat : flat.slice(0, w - 1) + "\\u2026";
}
document.getElementById("title").textContent = data.title;
document.getElementById("question").textContent = data.question;
const summary = document.getElementById("summary");
summary.appendChild(el("span", "", "answer: " + (data.answer ?? "(none)")));
if (data.gold !== null && data.gold !== undefined) {
  summary.appendChild(el("span", "", "gold: " + data.gold));
  summary.appendChild(el("span", data.correct ? "ans ok" : "ans bad",
                         data.correct ? "correct" : "wrong"));
}
if (data.generated_tokens !== null && data.generated_tokens !== undefined)
  summary.appendChild(el("span", "", "generated tokens: " + data.generated_tokens));
summary.appendChild(el("span", "", data.nodes.length + " nodes"));
if (data.budget_exhausted) {
  const b = el("div", "banner", "BUDGET EXHAUSTED: the search was cut by its token budget");
  b.id = "budget-exhausted";
  summary.appendChild(b);
}
function build(node) {
  const d = el("details", "node status-" + node.status + (node.chosen ? " chosen" : ""));
  d.dataset.id = node.id;
  const s = el("summary");
  s.appendChild(el("span", "st st-" + node.status, node.status));
  const score = node.score === null ? "\\u2013" : node.score.toFixed(3);
  s.appendChild(el("span", "meta", "#" + node.id + " score " + score + " \\u00b7 " +
                   node.tokens + " tok \\u00b7 "));
  s.appendChild(el("span", "snip", snippet(node.text, 90)));
  if (node.cut_by_budget) s.appendChild(el("span", "cut", "\u2702 cut by budget"));
  if (node.answer !== null) {
    const cls = node.correct === true ? "ans ok" : node.correct === false ? "ans bad" : "ans";
    s.appendChild(el("span", cls, "\\u2192 " + node.answer));
  }
  d.appendChild(s);
  d.appendChild(el("div", "text", node.text));
  if (node.children.length) {
    const ul = el("ul", "children");
    for (const c of node.children) {
      const li = el("li");
      li.appendChild(build(byId.get(c)));
      ul.appendChild(li);
    }
    d.appendChild(ul);
  }
  d.open = node.chosen || node.depth === 0;
  return d;
}
const root = byId.get(0);
const rootList = el("ul", "children");
for (const c of root.children) {
  const li = el("li");
  li.appendChild(build(byId.get(c)));
  rootList.appendChild(li);
}
document.getElementById("tree").appendChild(rootList);
const all = () => Array.from(document.querySelectorAll("details.node"));
document.getElementById("expand").onclick = () => all().forEach(d => { d.open = true; });
document.getElementById("collapse").onclick = () => all().forEach(d => { d.open = false; });
document.getElementById("path").onclick = () =>
  all().forEach(d => { d.open = d.classList.contains("chosen"); });
function search(value) {
  const q = value.trim().toLowerCase();
  let hits = 0;
  for (const d of all()) {
    const n = byId.get(Number(d.dataset.id));
    const hit = q !== "" && (n.text.toLowerCase().includes(q) ||
                             String(n.answer ?? "").toLowerCase().includes(q));
    d.classList.toggle("hit", hit);
    if (hit) {
      hits += 1;
      for (let p = d.parentElement; p; p = p.parentElement)
        if (p.tagName === "DETAILS") p.open = true;
    }
  }
  document.getElementById("hits").textContent = q ? hits + " matching nodes" : "";
}
const box = document.getElementById("search");
box.addEventListener("input", ev => search(ev.target.value));
// A link may carry a search: tree.html#search=boxed
const wanted = new URLSearchParams(location.hash.slice(1)).get("search");
if (wanted) { box.value = wanted; search(wanted); }
</script>
</body>
</html>
"""
