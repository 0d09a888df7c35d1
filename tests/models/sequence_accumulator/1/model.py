"""A stateful accumulator that also echoes what the sequence batcher gave it.

OUTPUT = ACC_IN + INPUT and ACC_OUT (the implicit state) = OUTPUT.  The control inputs
come back as START_OUT / END_OUT / READY_OUT / CORRID_OUT; BATCH_SIZE and NULL_COUNT
are the number of requests in this execution and how many of them had READY false;
POSITION is the request's index in the execution; INSTANCE the model instance name.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"]
        config = json.loads(args["model_config"])
        corrid = next(o for o in config["output"] if o["name"] == "CORRID_OUT")
        self.corrid_dtype = pb_utils.triton_string_to_numpy(corrid["data_type"])

    def execute(self, requests):
        def get(request, name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        nulls = sum(1 for r in requests if not get(r, "READY").reshape(-1)[0])
        responses = []
        for position, request in enumerate(requests):
            total = get(request, "ACC_IN") + get(request, "INPUT")
            outputs = {
                "OUTPUT": total.astype(np.int32),
                "ACC_OUT": total.astype(np.int32),
                "START_OUT": get(request, "START").astype(np.int32),
                "END_OUT": get(request, "END").astype(np.float32),
                "READY_OUT": get(request, "READY").astype(np.bool_),
                "CORRID_OUT": get(request, "CORRID").astype(self.corrid_dtype),
                "BATCH_SIZE": np.array([[len(requests)]], dtype=np.int32),
                "NULL_COUNT": np.array([[nulls]], dtype=np.int32),
                "POSITION": np.array([[position]], dtype=np.int32),
                "INSTANCE": np.array([[self.instance.encode()]], dtype=np.object_),
            }
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, value) for name, value in outputs.items()]
                )
            )
        return responses
