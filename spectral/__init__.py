"""spectral: is a transformer's residual stream a carrier signal? Measured against explicit nulls.

The notebook API (:mod:`spectral.api`)::

    import spectral as sp
    model = sp.load_model("smollm2-135m")
    res = sp.measure(model, ["Once upon a time ...", "The cat sat ..."], seq_len=64)
    res.verdicts, res.metrics, res.figure("verdicts"), res.save("reports/runs/mine")
    sp.open_run("reports/runs/mine")
    sp.trace_prompt(model, "One prompt").carrier_share   # per token and layer, display only

The names are loaded on first use, so ``import spectral`` (and the ``spectral`` command) stays light.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("spectral")
except metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["PROBES", "Result", "__version__", "load_model", "measure", "open_run", "trace_prompt"]

if TYPE_CHECKING:
    from spectral.api import PROBES, Result, load_model, measure, open_run, trace_prompt


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from spectral import api

        return getattr(api, name)
    raise AttributeError(f"module 'spectral' has no attribute {name!r}")
