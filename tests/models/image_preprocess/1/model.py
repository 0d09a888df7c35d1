"""Server-side image preprocessing: encoded image bytes (JPEG, PNG, ...) -> FP32 pixels.

Each batch item of IMAGE (BYTES [1]) is decoded with Pillow, converted to RGB, resized to
8x8 and scaled to [0, 1]: PIXELS is FP32 [8, 8, 3] (NHWC), what the ensemble's
classifier takes.  An item that is not an image fails its request with a clear error.
"""

import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError

SIZE = 8


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((SIZE, SIZE))
        return np.asarray(rgb, dtype=np.float32) / 255.0


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                pixels = np.stack([_pixels(bytes(item[0])) for item in images])
            except (UnidentifiedImageError, OSError) as exc:
                error = pb_utils.TritonError(f"cannot decode image: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            out = pb_utils.Tensor("PIXELS", pixels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
