"""refmask's comparisons with the frameworks: the native conformance matrix and the benchmarks.

Installed with refmask as a top-level package of its own, `comparisons`; the `refmask compare` and
`refmask bench` commands import it when they run.

- cases.py: the case families (the matrix's columns), NumPy q, k, v + canonical mask + structure;
- torch_paths.py, jax_paths.py, flax_paths.py, onnx_paths.py, hf_paths.py, xformers_paths.py,
  attn_gym_paths.py, splash_paths.py, keras_paths.py: one adapter function per native path (the
  rows), each a readable example of stating refmask's masks in that library's own conventions
  (comparisons/matrix/frameworks.py registers them);
  _base.py: what the adapters share;
- matrix/: the engine and the `refmask compare` command; RESULTS.md / expected.json: its
  committed output for the pinned framework versions (see docs/comparisons.md);
- bench/: the `refmask bench` command (see docs/benchmarks.md);
- gpu/: `python -m comparisons.gpu`, the suite, matrix and timings on a CUDA machine, written to
  comparisons/RESULTS-cuda.md (see docs/comparisons.md, "On a GPU").
"""
