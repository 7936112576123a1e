"""pytest plugin (entry point pytest11): placeholder until refmask.testing's plugin lands."""
