"""The Python snippets of the README ("From PyTorch") and of the docs (the PyTorch package, the
TRL drop-in, vocabulary parallel) run as written."""
import re
from pathlib import Path

import pytest
from conftest import import_or_skip

ROOT = Path(__file__).resolve().parents[2]


def snippets(doc, section=None):
    text = (ROOT / doc).read_text()
    if section is not None:
        start = text.index(f"## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end >= 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{doc} {section or ''} has no python snippet"
    return blocks


@pytest.mark.parametrize("doc,section", [("README.md", "From PyTorch"), ("docs/pytorch.md", None),
                                         ("docs/vocab-parallel.md", None), ("docs/trl.md", None)])
def test_snippets_run(doc, section, tmp_path, monkeypatch):
    if doc == "docs/trl.md":
        import_or_skip("trl")
    monkeypatch.chdir(tmp_path)
    for code in snippets(doc, section):
        exec(compile(code, f"{doc}[{section or ''}]", "exec"), {"__name__": "readme"})
