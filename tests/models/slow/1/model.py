"""Sleeps, then returns INPUT0 and the [start, end] time.time() window of the execution.

Config parameters: ``sleep_s`` (seconds, default 0.2) and ``marker_dir``: when set, the
model writes ``<marker_dir>/started-<pid>-<n>`` as each execution starts, so a test can
tell that a request is being executed without sleeping.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.sleep_s = float(params.get("sleep_s", {}).get("string_value", "0.2"))
        self.marker_dir = params.get("marker_dir", {}).get("string_value", "")
        self.instance = args["model_instance_name"]
        self.count = 0

    def execute(self, requests):
        start = time.time()
        self.count += 1
        if self.marker_dir:
            name = f"started-{self.instance}-{self.count}"
            with open(os.path.join(self.marker_dir, name), "w") as marker:
                marker.write(str(start))
        time.sleep(self.sleep_s)
        end = time.time()
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            window = np.array([start, end], dtype=np.float64)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", data),
                        pb_utils.Tensor("WINDOW", window),
                    ]
                )
            )
        return responses
