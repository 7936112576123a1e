"""`refmask bench`: refmask timed against the native code it replaces (docs/benchmarks.md).

- modes.py: the shapes and repeats of full, --quick and --smoke mode;
- timing.py: interleaved medians and tracemalloc peaks; rows.py: one measurement and its target;
- cases/: the five cases, one module each; report.py: what is printed; command.py: the command.
"""
