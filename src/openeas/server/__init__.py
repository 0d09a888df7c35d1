"""The ``triton`` processor: a Triton-Inference-Server-compatible model server."""
