"""The GPU run: refmask's cross-backend suite on CUDA, the conformance matrix of the CUDA kernels, and
refmask's attention timed on the GPU (docs/comparisons.md, "On a GPU").

`python -m comparisons.gpu` runs it all, each stage a subprocess under its own timeout, in under 8
minutes (__main__.py); without a CUDA device it says so in one line and runs what needs none.

- device.py: the GPU, driver and versions (the reports' header), and the device each adapter runs on;
- _inputs.py: a case's arrays as a kernel takes them (rounded to half precision, head dim padded);
- torch_cuda_paths.py (SDPA's kernels forced, refmask's torch backend on CUDA), flex_cuda_paths.py
  (torch.compile(flex_attention)), jax_gpu_paths.py (cuDNN dot_product_attention, refmask's jax backend):
  the adapters, in the style of comparisons/*_paths.py;
- matrix.py: their matrix, with its own registry (not `refmask compare`'s), as RESULTS-cuda.md;
- bench.py: the timings.
"""
