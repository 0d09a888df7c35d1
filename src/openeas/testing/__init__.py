"""Helpers for tests and benchmarks: tiny models written on demand.

Nothing here is imported by the server itself.  The ONNX builders need the ``onnx``
package (a dev dependency) and import it only when called.
"""
