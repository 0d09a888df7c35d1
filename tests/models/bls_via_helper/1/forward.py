"""The BLS call of ``bls_via_helper``, in a module of its own."""

import triton_python_backend_utils as pb_utils


def call(target, a, b):
    answer = pb_utils.InferenceRequest(
        model_name=target, inputs=[a, b], requested_output_names=["OUTPUT0"]
    ).exec()
    if answer.has_error():
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.error().message()))
    out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out)])
