"""The README stays true: its file tree exists and its Python snippet runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _tree_paths() -> list[str]:
    """Every file and folder the Layout block names: the names that start a line (``a.py,
    b.py`` both count) and the ``*.py`` files its description mentions (beside a file, inside
    a folder); a line that starts in the description column continues the line above."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    paths, stack = [], []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= 20:
            folder = "/".join(stack[:-1])
            names = []
        else:
            words = line.split()
            names = [words[0].rstrip(",")]
            for word in words[1:]:
                if not names[-1] or not words[words.index(word) - 1].endswith(","):
                    break
                names.append(word.rstrip(","))
            depth = indent // 2
            stack = stack[:depth] + [names[0].rstrip("/")]
            folder = "/".join(stack[:-1])
            paths.extend("/".join([folder, n.rstrip("/")]).lstrip("/") for n in names)
            if names[0].endswith("/"):       # a folder's description names files inside it
                folder = "/".join(stack)
        for mention in re.findall(r"(?<![\w/.])(\w+\.py)\b", line[24:] if names else line):
            paths.append("/".join([folder, mention]).lstrip("/"))
    return paths


def test_every_path_in_the_tree_exists():
    paths = _tree_paths()
    assert len(paths) > 10
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, missing


def test_the_python_snippet_runs():
    snippets = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert snippets
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {})


def test_the_two_setup_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
