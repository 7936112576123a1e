"""Regenerate refmask/_api.pyi, the types of the generated public API: python -m refmask._stubgen."""

from pathlib import Path

from ._api import stub_source

if __name__ == "__main__":
    Path(__file__).with_name("_api.pyi").write_text(stub_source())
