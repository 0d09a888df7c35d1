"""Decoupled: answers INPUT0 once at once, then waits until the request is cancelled.

When ``request.is_cancelled()`` turns True (the client cancelled the stream) the model
writes ``<marker_dir>/cancelled-<request id>`` (config parameter ``marker_dir``) and
closes the sender with a bare final flag.  It gives up after ``timeout_s`` (config
parameter, default 30) and writes ``timeout-<request id>`` instead.
"""

import json
import os
import threading
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.marker_dir = params.get("marker_dir", {}).get("string_value", "")
        self.timeout_s = float(params.get("timeout_s", {}).get("string_value", "30"))
        self.threads = []

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
            thread = threading.Thread(target=self._wait, args=(request,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return None

    def _wait(self, request):
        sender = request.get_response_sender()
        deadline = time.monotonic() + self.timeout_s
        while not request.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        state = "cancelled" if sender.is_cancelled() else "timeout"
        if self.marker_dir:
            path = os.path.join(self.marker_dir, f"{state}-{request.request_id()}")
            # Written then renamed, so a reader never sees an empty marker.
            with open(path + ".tmp", "w") as marker:
                marker.write(state)
            os.replace(path + ".tmp", path)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
