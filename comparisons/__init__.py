"""Native conformance adapters: each native masking/attention path held against the oracle.

- cases.py: the case families (the matrix's columns), NumPy q, k, v + canonical mask + structure;
- torch_paths.py, jax_paths.py, flax_paths.py: one adapter function per native path (the rows),
  each a readable example of stating refmask's masks in that framework's own conventions;
- matrix.py: the engine and the `refmask compare` command; RESULTS.md / expected.json: its
  committed output for the pinned framework versions (see docs/comparisons.md).
"""
