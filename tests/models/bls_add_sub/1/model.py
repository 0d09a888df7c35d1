"""BLS: forwards INPUT0/INPUT1 to the model named by TARGET and returns its OUTPUT0.

``execute`` is ``async`` and sends the BLS requests of a batch concurrently with
``async_exec``; a single request goes through the blocking ``exec``.
"""

import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        calls = []
        for request in requests:
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy()[0]
            bls = pb_utils.InferenceRequest(
                model_name=target.decode(),
                inputs=[
                    pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                    pb_utils.get_input_tensor_by_name(request, "INPUT1"),
                ],
                requested_output_names=["OUTPUT0"],
            )
            calls.append(bls)
        if len(calls) == 1:
            answers = [calls[0].exec()]
        else:
            answers = await asyncio.gather(*(call.async_exec() for call in calls))
        responses = []
        for answer in answers:
            if answer.has_error():
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"BLS call failed: {answer.error().message()}")
                    )
                )
                continue
            output = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0")
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", output.as_numpy())]
                )
            )
        return responses
