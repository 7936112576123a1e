"""The conformance matrix: every native path (a row, comparisons/*_paths.py) run on every case
family (a column, comparisons/cases.py) and held against the oracle.

- frameworks.py: which frameworks' adapters can run here (refmask's registry of dependencies);
- cell.py: one cell of the matrix and how it reads; evaluate.py: running one path on one case;
  explain.py: the one-line reason and max error of a cell that differs;
- engine.py: the whole matrix as a JSON-ready dict; render.py: as text, Markdown or JSON;
- command.py: the `refmask compare` command.
"""
