"""Query a Triton-compatible endpoint the way the user's document does.

Binary input, binary output requested by name, 10 timed requests.  Works against a local
``openeas-server`` (``--url 127.0.0.1:8000``) and, later, against a service endpoint
(``--url HOST:8080/api/predict/<service> --token <token>``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port[/base path]")
    parser.add_argument("--token", default="", help="service token (Authorization header)")
    parser.add_argument("--model", default="add_sub_onnx")
    parser.add_argument("-n", "--requests", type=int, default=10)
    args = parser.parse_args()

    headers = {"Authorization": args.token} if args.token else None
    client = httpclient.InferenceServerClient(url=args.url, verbose=False)

    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "FP32"),
              httpclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)

    start = time.time()
    for i in range(args.requests):
        results = client.infer(args.model, inputs=inputs, outputs=[output], headers=headers)
        body = results.get_response()
        elapsed_ms = (time.time() - start) * 1000
        if i == 0:
            print("model name: ", body["model_name"])
            print("model version: ", body["model_version"])
            print("output name: ", body["outputs"][0]["name"])
            print("output shape: ", body["outputs"][0]["shape"])
            assert np.array_equal(results.as_numpy("OUTPUT0"), a + b), "wrong result"
        print(f"[{i}] Avg rt(ms): {elapsed_ms:.2f}")
        start = time.time()


if __name__ == "__main__":
    main()
