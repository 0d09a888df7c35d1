"""execute() raises: the server must turn that into an error for every request."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise pb_utils.TritonModelException("raising model: execute failed on purpose")
