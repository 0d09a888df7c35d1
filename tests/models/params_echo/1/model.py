"""OUTPUT0 = INPUT0; PARAMETERS = the request's parameters (a JSON string)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            params = np.array([request.parameters().encode("utf-8")], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", in_0.as_numpy()),
                        pb_utils.Tensor("PARAMETERS", params),
                    ]
                )
            )
        return responses
