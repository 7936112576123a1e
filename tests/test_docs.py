"""The documentation is true to the code.

- Every ```python block of README.md and docs/*.md runs (a `>>>` block as a doctest), or is marked
  `<!-- fragment -->` on the line before it and is then at least valid Python. docs/testing.md's
  blocks run in tests/test_examples.py (with the plugin's fixture), so here they are only compiled.
  A block that imports jax, flax, torch or matplotlib is skipped only when that is not installed.
- docs/api.md's definitions are the oracle's docstrings as they are now (`python -m refmask._apidoc`).
- The README's "The definitions" signatures are the oracle's.
- CI runs the README's set-up commands verbatim, and no page a user reads cites a tracker.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import refmask
from refmask import _apidoc, oracle

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API = ROOT / "docs" / "api.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUN_ELSEWHERE = {ROOT / "docs" / "testing.md": "tests/test_examples.py"}
FRAGMENT = "<!-- fragment -->"
# What a block's imports need installed, beyond refmask and NumPy.
FRAMEWORKS = {"jax": ["jax"], "flax": ["flax"], "torch": ["torch"], "matplotlib": ["matplotlib"]}
FRAMEWORKS |= {"refmask.jax": ["jax", "flax"], "refmask.torch": ["torch"], "refmask.backends.jax": ["jax"]}
FRAMEWORKS |= {"refmask.backends.torch": ["torch"]}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, indented ones (inside lists) included."""
    lines = path.read_text().splitlines()
    blocks, n = [], 0
    while n < len(lines):
        opening = re.match(r"^(?P<indent> *)```(?P<language>[\w+-]*)\s*$", lines[n])
        if not opening:
            n += 1
            continue
        indent = len(opening["indent"])
        end = next(i for i in range(n + 1, len(lines)) if re.match(r"^ *```\s*$", lines[i]))
        source = "".join(line[indent:] + "\n" for line in lines[n + 1 : end])
        before = next((lines[i].strip() for i in range(n - 1, -1, -1) if lines[i].strip()), "")
        blocks.append(Block(path, n + 1, opening["language"], source, before == FRAGMENT))
        n = end + 1
    return blocks


PYTHON_BLOCKS = [b for path in DOCS for b in fenced_blocks(path) if b.language == "python"]
DOCTEST_FILES = sorted({b.path for b in PYTHON_BLOCKS if b.source.lstrip().startswith(">>>")})


def required_frameworks(source: str) -> list[str]:
    needed: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            for depth in range(len(parts), 0, -1):
                if ".".join(parts[:depth]) in FRAMEWORKS:
                    needed += FRAMEWORKS[".".join(parts[:depth])]
                    break
    return sorted(set(needed))


def test_docs_have_python_blocks():
    # A changed fence syntax would silently leave every block untested.
    assert {b.path for b in PYTHON_BLOCKS} >= {README, API, ROOT / "docs" / "jax.md", ROOT / "docs" / "torch.md"}


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
# Eager flex_attention (docs/torch.md) says it runs unfused without torch.compile: that is intended.
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")
def test_python_block(block, monkeypatch):
    if block.source.lstrip().startswith(">>>"):
        assert not block.fragment, f"{block.id}: a doctest block is run, not a fragment"
        return  # run with its file's other examples by test_doctest_examples
    # Every block, fragment or not, is Python; padded so that tracebacks give the file's line numbers.
    code = compile("\n" * block.line + block.source, str(block.path), "exec")
    if block.fragment or block.path in RUN_ELSEWHERE:
        return
    for module in required_frameworks(block.source):
        pytest.importorskip(module, reason=f"{block.id} needs {module}")
    # `from my_attention import attention` in the README is the example kernel of examples/.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.delitem(sys.modules, "my_attention", raising=False)
    namespace: dict[str, object] = {"__name__": "doc_block"}
    exec(code, namespace)
    for name, fn in list(namespace.items()):
        if name.startswith("test_") and callable(fn):
            fn()


@pytest.mark.parametrize("path", DOCTEST_FILES, ids=[str(p.relative_to(ROOT)) for p in DOCTEST_FILES])
def test_doctest_examples(path):
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {path.name} failed (output above)"


def test_blocks_elsewhere_are_run_there():
    for path, test_file in RUN_ELSEWHERE.items():
        assert path.name in (ROOT / test_file).read_text(), f"{test_file} no longer runs {path.name}'s blocks"


# ---------------------------------------------------------------------------------------------
# docs/api.md from the oracle's docstrings


def test_api_reference_is_generated_from_the_current_oracle():
    text = API.read_text()
    stale = [
        name
        for name in _apidoc.public_oracle_functions()
        if _apidoc.definition(name) not in text
    ]
    assert _apidoc.render(text) == text, (
        f"docs/api.md is stale (definitions of {', '.join(stale) or 'functions no longer public'}); "
        f"regenerate it with: {_apidoc.COMMAND}"
    )


def test_every_public_oracle_function_is_defined_in_the_api_reference():
    text = API.read_text()
    public = [n for n in refmask.__all__ if inspect.isfunction(getattr(oracle, n, None))]
    assert public, "refmask.__all__ names no oracle function"
    for name in public:
        assert f"<!-- generated: {name} -->\n### `{name}(" in text, name
        doc = inspect.getdoc(getattr(oracle, name))
        assert doc and doc in text, name


def test_a_new_oracle_function_is_picked_up_without_a_list(monkeypatch):
    def from_example(mask, *, fill="min"):
        """Example definition: keep where mask is True.

        Its second paragraph.
        """

    from_example.__module__ = oracle.__name__
    monkeypatch.setattr(oracle, "from_example", from_example, raising=False)
    monkeypatch.setattr(refmask, "from_example", from_example, raising=False)
    monkeypatch.setattr(refmask, "__all__", [*refmask.__all__, "from_example"])

    text = _apidoc.render(API.read_text())
    block = (
        '<!-- generated: from_example -->\n### `from_example(mask, *, fill="min")`\n\n'
        "Example definition: keep where mask is True.\n\nIts second paragraph.\n<!-- end generated -->\n"
    )
    assert text.count(block) == 1
    assert text.index(block) < text.index(_apidoc.NEW_DEFINITIONS)
    assert _apidoc.render(text) == text


def test_generator_removes_blocks_of_functions_no_longer_public_and_keeps_hand_written_text():
    doc = (
        "intro\n<!-- generated: gone_function -->\n### `gone_function()`\n\nold\n<!-- end generated -->\n"
        "a note\n" + _apidoc.NEW_DEFINITIONS + "\ntail\n"
    )
    text = _apidoc.render(doc)
    assert "gone_function" not in text
    assert text.startswith("intro\n") and "a note\n" in text and text.endswith("tail\n")
    assert all(_apidoc.definition(name) in text for name in _apidoc.public_oracle_functions())


def test_generator_refuses_a_page_where_a_definition_cannot_go():
    with pytest.raises(ValueError, match="causal_mask"):
        _apidoc.render("a page without markers\n")
    twice = _apidoc.definition("causal_mask") * 2 + _apidoc.NEW_DEFINITIONS
    with pytest.raises(ValueError, match="more than one generated block for causal_mask"):
        _apidoc.render(twice)


def test_generator_check_mode_names_the_command(tmp_path, capsys):
    stale = tmp_path / "api.md"
    stale.write_text(_apidoc.NEW_DEFINITIONS + "\n")
    assert _apidoc.main(["--check", str(stale)]) == 1
    assert _apidoc.COMMAND in capsys.readouterr().err
    assert stale.read_text() == _apidoc.NEW_DEFINITIONS + "\n"  # --check writes nothing
    assert _apidoc.main([str(stale)]) == 0
    assert _apidoc.main(["--check", str(stale)]) == 0


# ---------------------------------------------------------------------------------------------
# README


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shown_signatures(section: str) -> list[tuple[str, str]]:
    """(function name, parameter list) of every `name(...)` code span naming an oracle function."""
    found = []
    for span in re.findall(r"`([^`]+)`", section):
        call = re.fullmatch(r"(?:refmask\.oracle\.|refmask\.)?(\w+)\((.*)\)", span, flags=re.S)
        if call and inspect.isfunction(getattr(oracle, call[1], None)):
            found.append((call[1], call[2]))
    return found


def parameters(params: str) -> list[tuple[str, inspect._ParameterKind, object]]:
    """(name, kind, default) of a parameter list as written, e.g. 'q_len, kv_len=None, *, align="top_left"'."""
    fn = ast.parse(f"def f({params}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    a, empty = fn.args, inspect.Parameter.empty
    positional = a.posonlyargs + a.args
    defaults = [empty] * (len(positional) - len(a.defaults)) + [ast.literal_eval(d) for d in a.defaults]
    kinds: list[inspect._ParameterKind] = [inspect.Parameter.POSITIONAL_ONLY] * len(a.posonlyargs)
    kinds += [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(a.args)
    out: list[tuple[str, inspect._ParameterKind, object]] = [
        (p.arg, kind, d) for p, kind, d in zip(positional, kinds, defaults, strict=True)
    ]
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, empty))
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((p.arg, inspect.Parameter.KEYWORD_ONLY, empty if d is None else ast.literal_eval(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, empty))
    return out


def test_parameters_reads_a_written_signature():
    P = inspect.Parameter
    assert parameters('q, k=None, *masks, fill="min", n=-1') == [
        ("q", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("k", P.POSITIONAL_OR_KEYWORD, None),
        ("masks", P.VAR_POSITIONAL, P.empty),
        ("fill", P.KEYWORD_ONLY, "min"),
        ("n", P.KEYWORD_ONLY, -1),
    ]


def test_readme_definitions_show_the_oracle_signatures():
    shown = shown_signatures(readme_section("The definitions"))
    assert len(shown) >= 15, f"the README's definitions list only {len(shown)} signatures"
    for name, params in shown:
        signature = inspect.signature(getattr(oracle, name))
        actual = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        assert parameters(params) == actual, f"README shows {name}({params}); the oracle has {name}{signature}"


# ---------------------------------------------------------------------------------------------
# CI and the words a user reads


def setup_commands(path: Path = README) -> list[str]:
    """The commands of the first bash block that installs refmask, comments left out."""
    block = next(b for b in fenced_blocks(path) if b.language == "bash" and "pip install" in b.source)
    return [line for line in block.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_contributing_sets_up_with_the_readme_commands():
    assert setup_commands(ROOT / "CONTRIBUTING.md") == setup_commands(README)


def test_ci_runs_the_readme_setup_verbatim_with_lint_and_types_before_the_tests():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = setup_commands()
    assert len(commands) == 2, commands
    install, tests = (next(i for i, line in enumerate(ci) if line.startswith(c)) for c in commands)
    lint, types = ci.index("ruff check ."), ci.index("mypy")
    assert "set -euo pipefail" in ci[:5]
    assert install < lint < tests and install < types < tests
    # set -e does not stop at a failure inside an && list, so the install line must exit on its own.
    assert ci[install].endswith("|| exit"), ci[install]
    # Standing alone, any non-zero status of the tests fails CI, pytest's 5 (no tests collected) included.
    assert ci[tests] == commands[1], ci[tests]
    assert ci.index("refmask bench --quick") > tests


TRACKER_REFERENCE = re.compile(r"\b[Ii]ssues? \d+|(?<![\w&/])#\d+\b")
USER_TEXT = [*DOCS, ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("path", USER_TEXT, ids=[str(p.relative_to(ROOT)) for p in USER_TEXT])
def test_no_tracker_references(path):
    hits = [line for line in path.read_text().splitlines() if TRACKER_REFERENCE.search(line)]
    assert not hits, f"{path.name} cites a tracker: {hits}"


@pytest.mark.parametrize("command", [[], ["compare"], ["show"], ["bench"]], ids=["refmask", "compare", "show", "bench"])
def test_no_tracker_references_in_cli_help(command, capsys):
    from refmask.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert command == [] or f"refmask {command[0]}" in help_text
    hits = [line.strip() for line in help_text.splitlines() if TRACKER_REFERENCE.search(line)]
    assert not hits, f"`refmask {' '.join(command)} --help` cites a tracker: {hits}"


def test_changelog_has_a_section_for_this_version():
    assert re.search(rf"^## \[{re.escape(refmask.__version__)}\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
