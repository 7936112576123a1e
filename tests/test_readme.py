"""The README's Python examples run as written (with examples/ importable, as a user's own module
would be), and the test functions they define pass."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2, "README.md lost its ```python examples"


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(source, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    namespace: dict = {}
    exec(compile(source, str(README), "exec"), namespace)
    for name, fn in namespace.items():
        if name.startswith("test_") and callable(fn):
            fn()
    sys.modules.pop("my_attention", None)
