"""Example models built locally, in Triton's example repository layout.

``openeas models fetch NAME DIR`` is the counterpart of Triton's ``fetch_models.sh``: these
machines cannot download Google's pretrained files, so the architectures are built here
(random weights unless a pretrained file is given) with the tensor names and configs of
Triton's examples.  Nothing here imports the server.
"""

from __future__ import annotations

from openeas.zoo.registry import MODELS, ZooError, fetch

__all__ = ["MODELS", "ZooError", "fetch"]
