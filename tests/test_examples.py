"""The user's-eye examples in examples/ run, as a user would run them, with pytest.

examples/ is outside the configured testpaths (["tests"]), so a plain `pytest` collects these
only here, once.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_examples_are_outside_testpaths():
    import tomllib

    config = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    assert "examples" not in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_user_kernel_examples_pass(pytester):
    test_files = sorted(EXAMPLES.glob("test_*.py"))
    assert test_files, f"no example tests in {EXAMPLES}"
    result = pytester.runpytest(str(EXAMPLES), "-p", "no:cacheprovider", "-q")
    n_tests = sum(f.read_text().count("\ndef test_") for f in test_files)
    result.assert_outcomes(passed=n_tests)


DOC = EXAMPLES.parent / "docs" / "testing.md"
DOC_BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_testing_doc_has_python_blocks():
    assert len(DOC_BLOCKS) >= 4


@pytest.mark.parametrize("source", DOC_BLOCKS, ids=[f"block{i}" for i in range(len(DOC_BLOCKS))])
def test_testing_doc_block_runs(source, monkeypatch):
    # `from my_attention import attention` in the doc is the example kernel of examples/.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    namespace: dict = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    for name, fn in list(namespace.items()):
        if name.startswith("test_") and callable(fn):
            params = inspect.signature(fn).parameters
            fn(**({"attention_backend": "numpy"} if "attention_backend" in params else {}))
