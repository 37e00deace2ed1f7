"""The interactive tree page in a real headless browser (Chromium; scripts/ci_browser.sh).

The page must load with no console message at all (an error, or a stray log), open and
mark the chosen path, and apply a search given in the link.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ttc.compose import run_config
from ttc.evals.treeview import write_tree_html
from ttc.pipeline import Pipeline
from ttc.tree import SearchTree

pytestmark = pytest.mark.browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on PATH; scripts/ci_browser.sh installs Debian's chromium.")


def run_browser(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         *args, url], capture_output=True, text=True, timeout=180, check=True)


class Details(HTMLParser):
    """Collects every tree node's <details>: id, classes, open or not."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[dict] = []
        self.hits_text = ""
        self._in_hits = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details" and "node" in (a.get("class") or "").split():
            self.nodes.append({"id": int(a["data-id"]), "classes": a["class"].split(),
                               "open": "open" in a})
        self._in_hits = a.get("id") == "hits"

    def handle_data(self, data):
        if self._in_hits:
            self.hits_text += data

    def handle_endtag(self, tag):
        self._in_hits = False


@pytest.fixture(scope="module")
def record():
    config = run_config(["backend=simulated", "verifier=simulated", "strategy=beam"])
    result = Pipeline.from_config(config).solve("What is 2+3?")
    assert result.answer is not None
    return {"id": "p0", "tree": result.tree, "answer": result.answer, "gold": result.answer,
            "correct": True, "budget_exhausted": result.budget_exhausted,
            "ledger": result.ledger.model_dump(mode="json")}


def test_page_loads_without_console_messages_and_shows_the_chosen_path(record, tmp_path):
    page = write_tree_html(record, tmp_path / "tree.html")
    done = run_browser(page.resolve().as_uri(), tmp_path, "--dump-dom")
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln]
    assert console == []
    dom = Details()
    dom.feed(done.stdout)
    tree = SearchTree.from_json(record["tree"])
    assert sorted(n["id"] for n in dom.nodes) == sorted(n.id for n in tree if n.id != 0)
    chosen = [n["id"] for n in dom.nodes if "chosen" in n["classes"]]
    assert chosen == tree.chosen_path()[1:] and chosen
    assert all(n["open"] for n in dom.nodes if n["id"] in chosen)
    assert not any(n["open"] for n in dom.nodes if "status-pruned" in n["classes"])
    shot = tmp_path / "shot.png"
    run_browser(page.resolve().as_uri(), tmp_path, "--hide-scrollbars",
                "--window-size=1200,900", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_search_in_the_link_marks_and_opens_the_matching_nodes(record, tmp_path):
    page = write_tree_html(record, tmp_path / "tree.html")
    done = run_browser(page.resolve().as_uri() + "#search=boxed", tmp_path, "--dump-dom")
    assert [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln] == []
    dom = Details()
    dom.feed(done.stdout)
    tree = SearchTree.from_json(record["tree"])
    expected = sorted(n.id for n in tree if n.id != 0 and
                      ("boxed" in n.text.lower() or "boxed" in str(n.answer or "").lower()))
    hits = sorted(n["id"] for n in dom.nodes if "hit" in n["classes"])
    assert hits == expected and hits
    assert dom.hits_text.strip() == f"{len(expected)} matching nodes"
    for nid in hits:                    # every ancestor of a hit is opened
        for anc in tree.path(nid)[:-1]:
            assert next(n for n in dom.nodes if n["id"] == anc.id)["open"]
