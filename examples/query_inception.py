"""Query the inception_graphdef service the way the user's document does (HTTP).

The document's client script, with the service URL, token and image as arguments: a
binary FP32 input ``input`` [1, 299, 299, 3], the binary output
``InceptionV3/Predictions/Softmax``, timed requests printed as ``[i] Avg rt(ms): ...``,
then the top-5 classes through Triton's classification extension.

    python examples/query_inception.py --url http://127.0.0.1:8080/api/predict/triton_inception \
        --token="$TOKEN"

``--url`` and ``--token`` default to ``$OPENEAS_SERVICE_URL`` and ``$OPENEAS_SERVICE_TOKEN``
(``eascmd desc NAME --json`` prints both).  The default image is the cat photo that
scikit-image ships (``skimage.data.chelsea()``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

MODEL = "inception_graphdef"
INPUT = "input"
OUTPUT = "InceptionV3/Predictions/Softmax"


def load_image(path: str | None, size: int = 299) -> np.ndarray:
    """The image as FP32 [1, size, size, 3] scaled to [0, 1], as the document prepares it."""
    from PIL import Image

    if path:
        image = Image.open(Path(path)).convert("RGB")
    else:
        from skimage import data

        image = Image.fromarray(data.chelsea())
    pixels = np.asarray(image.resize((size, size))).astype("float32") / 255.0
    return pixels.reshape([1, size, size, 3])


def strip_scheme(url: str) -> str:
    """tritonclient wants ``host:port/path``; eascmd prints ``http://host:port/path``."""
    for scheme in ("http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("OPENEAS_SERVICE_URL"),
        help="service endpoint, e.g. http://HOST:8080/api/predict/NAME",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("OPENEAS_SERVICE_TOKEN", ""),
        help="service token (sent as the Authorization header)",
    )
    parser.add_argument("--image", help="image file (default: scikit-image's cat photo)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument(
        "-n",
        "--requests",
        type=int,
        default=11,
        help="timed requests (default 11, as in the document's output)",
    )
    parser.add_argument("--top", type=int, default=5, help="classes to print (0: none)")
    args = parser.parse_args()
    if not args.url:
        parser.error("--url (or $OPENEAS_SERVICE_URL) is required")
    return args


def main() -> None:
    args = parse_args()
    url = strip_scheme(args.url)
    headers = {"Authorization": args.token} if args.token else None

    input_img = httpclient.InferInput(INPUT, [1, 299, 299, 3], "FP32")
    input_img.set_data_from_numpy(load_image(args.image), binary_data=True)
    output = httpclient.InferRequestedOutput(OUTPUT, binary_data=True)
    client = httpclient.InferenceServerClient(url=url, verbose=False)

    start = time.time()
    for i in range(args.requests):
        results = client.infer(args.model, inputs=[input_img], outputs=[output], headers=headers)
        body = results.get_response()
        elapsed_ms = (time.time() - start) * 1000
        if i == 0:
            print("model name: ", body["model_name"])
            print("model version: ", body["model_version"])
            print("output name: ", body["outputs"][0]["name"])
            print("output shape: ", body["outputs"][0]["shape"])
        print(f"[{i}] Avg rt(ms): {elapsed_ms:.2f}")
        start = time.time()

    if args.top > 0:
        top = httpclient.InferRequestedOutput(OUTPUT, binary_data=False, class_count=args.top)
        results = client.infer(args.model, inputs=[input_img], outputs=[top], headers=headers)
        print(f"top-{args.top} classes (score:index:label):")
        for entry in results.as_numpy(OUTPUT).reshape(-1):
            print("  ", entry.decode() if isinstance(entry, bytes) else entry)


if __name__ == "__main__":
    main()
