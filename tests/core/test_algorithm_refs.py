"""The project's algorithm notes are the one reference: every ``docs/algorithms.md#anchor``
in the sources and docs names a heading of docs/algorithms.md, each method section cites
its paper or says it is the project's own, and nothing points at a file outside the
repository (the old ALGORITHMS.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "algorithms.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith((".py", ".md", ".yaml", ".toml"))]


def test_every_reference_names_a_heading():
    anchors = {_anchor(line.lstrip("#")) for line in DOC.read_text().splitlines()
               if line.startswith("#")}
    refs = []
    for path in _tracked():
        if path.name == Path(__file__).name:
            continue
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"docs/algorithms\.md#([\w\-]+)((?:, #[\w\-]+)*)", text):
            refs.append((path.name, m.group(1)))
            refs += [(path.name, extra) for extra in re.findall(r"#([\w\-]+)", m.group(2))]
        refs += [(path.name, a) for a in re.findall(r"\]\(#([\w\-]+)\)", text)
                 if path == DOC]
    assert refs, "no reference found: the pattern is wrong"
    missing = sorted({(name, a) for name, a in refs if a not in anchors})
    assert not missing, f"references to headings docs/algorithms.md lacks: {missing}"


def test_no_reference_to_a_file_outside_the_repository():
    bad = [p.relative_to(ROOT).as_posix() for p in _tracked()
           if "ALGORITHMS.md" in p.read_text(encoding="utf-8")
           and p.name != Path(__file__).name]
    assert not bad, f"these files cite ALGORITHMS.md, which is not in the repository: {bad}"


def test_each_method_section_cites_a_paper_or_says_it_is_ours():
    sections = re.split(r"\n### ", DOC.read_text())[1:]
    assert len(sections) >= 25
    for section in sections:
        name = section.splitlines()[0]
        assert re.search(r"arXiv:\d{4}\.\d{4,5}", section) or "ttc's own" in section \
            or "blog" in section, f"section {name!r} cites no paper"
