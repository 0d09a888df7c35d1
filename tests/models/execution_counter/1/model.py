"""COUNT = how many requests this instance has executed, this one included."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.executed = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.executed += 1
            batch = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().shape[0]
            count = np.full((batch, 1), self.executed, dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", count)]))
        return responses
