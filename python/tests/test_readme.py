"""The README's Python snippets (sections "Using it" (the vocabulary-parallel one), "Use from
PyTorch" and "Use with TRL") run as written."""
import re
from pathlib import Path

import pytest
from conftest import import_or_skip

README = Path(__file__).resolve().parents[2] / "README.md"


def snippets(section):
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert blocks, f"README section {section!r} has no python snippet"
    return blocks


@pytest.mark.parametrize("section", ["Using it", "Use from PyTorch", "Use with TRL"])
def test_readme_snippets_run(section, tmp_path, monkeypatch):
    if section == "Use with TRL":
        import_or_skip("trl")
    monkeypatch.chdir(tmp_path)
    for code in snippets(section):
        exec(compile(code, f"README.md[{section}]", "exec"), {"__name__": "readme"})
