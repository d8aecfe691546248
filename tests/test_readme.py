"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, capsys):
    code = _python_blocks()[index]
    exec(compile(code, f"README block {index}", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_readme_setup_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert any(b.strip().endswith("mibounds validate") for b in blocks)
    assert any("python -m pytest" in b for b in blocks)
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test,docs,examples,dev,triton,peers]"' in ci
    assert "python -m pytest -n auto" in ci
