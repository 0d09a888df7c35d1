"""Query the inception_graphdef service through gRPC (impossible on the document's platform).

The gateway's gRPC port (default 8081) serves ``inference.GRPCInferenceService`` for every
service; the metadata ``x-eas-service`` names the service and ``authorization`` carries its
token:

    python examples/query_inception_grpc.py --url 127.0.0.1:8081 --service triton_inception \
        --token="$TOKEN"

Against a standalone ``openeas-server`` use ``--url 127.0.0.1:8001`` and no token.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_inception import INPUT, MODEL, OUTPUT, load_image  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("OPENEAS_SERVICE_GRPC", "127.0.0.1:8081"),
        help="host:port of the gateway's gRPC port (or a processor's)",
    )
    parser.add_argument(
        "--service",
        default=os.environ.get("OPENEAS_SERVICE_NAME", ""),
        help="service name (x-eas-service metadata)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("OPENEAS_SERVICE_TOKEN", ""),
        help="service token (authorization metadata)",
    )
    parser.add_argument("--image", help="image file (default: scikit-image's cat photo)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("-n", "--requests", type=int, default=11)
    parser.add_argument("--top", type=int, default=5, help="classes to print (0: none)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    headers = {}
    if args.token:
        headers["authorization"] = args.token
    if args.service:
        headers["x-eas-service"] = args.service

    input_img = grpcclient.InferInput(INPUT, [1, 299, 299, 3], "FP32")
    input_img.set_data_from_numpy(load_image(args.image))
    output = grpcclient.InferRequestedOutput(OUTPUT)
    client = grpcclient.InferenceServerClient(url=args.url, verbose=False)

    start = time.time()
    for i in range(args.requests):
        results = client.infer(args.model, inputs=[input_img], outputs=[output], headers=headers)
        response = results.get_response()
        elapsed_ms = (time.time() - start) * 1000
        if i == 0:
            print("model name: ", response.model_name)
            print("model version: ", response.model_version)
            print("output name: ", response.outputs[0].name)
            print("output shape: ", list(response.outputs[0].shape))
        print(f"[{i}] Avg rt(ms): {elapsed_ms:.2f}")
        start = time.time()

    if args.top > 0:
        top = grpcclient.InferRequestedOutput(OUTPUT, class_count=args.top)
        results = client.infer(args.model, inputs=[input_img], outputs=[top], headers=headers)
        print(f"top-{args.top} classes (score:index:label):")
        for entry in results.as_numpy(OUTPUT).reshape(-1):
            print("  ", entry.decode() if isinstance(entry, bytes) else entry)


if __name__ == "__main__":
    main()
