"""Decoupled: sends INPUT0 back REPEAT times (with INDEX 0..REPEAT-1), then the final flag.

The responses come from a thread started in ``execute`` (which returns None at once).
Request parameters (optional):

* ``final_with_last`` (bool): send the last response together with the final flag
  instead of a bare final flag afterwards.
* ``error_at`` (int): send an error response (INVALID_ARG) instead of response #n.
* ``delay_ms`` (int): sleep between responses.

Config parameter ``marker_dir``: when set, after the final flag the model sends once more
and writes ``<marker_dir>/after-final-<request id>`` with the exception's type and message.
"""

import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(config)
        params = config.get("parameters", {})
        self.marker_dir = params.get("marker_dir", {}).get("string_value", "")
        self.threads = []

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._answer, args=(request,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return None

    def _answer(self, request):
        sender = request.get_response_sender()
        data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
        repeat = int(pb_utils.get_input_tensor_by_name(request, "REPEAT").as_numpy()[0])
        params = json.loads(request.parameters())
        final_with_last = bool(params.get("final_with_last", False))
        error_at = int(params.get("error_at", -1))
        delay = int(params.get("delay_ms", 0)) / 1000.0
        for index in range(repeat):
            if delay:
                time.sleep(delay)
            if index == error_at:
                response = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"error at {index}", pb_utils.TritonError.INVALID_ARG
                    )
                )
            else:
                response = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", data),
                        pb_utils.Tensor("INDEX", np.array([index], dtype=np.int32)),
                    ]
                )
            last = index == repeat - 1
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last and final_with_last else 0
            sender.send(response, flags=flags)
        if not (repeat and final_with_last):
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if self.marker_dir:
            try:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                text = "no error"
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
            path = os.path.join(self.marker_dir, f"after-final-{request.request_id()}")
            # Written then renamed, so a reader never sees an empty marker.
            with open(path + ".tmp", "w") as marker:
                marker.write(text)
            os.replace(path + ".tmp", path)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
