"""The gateway: /api/predict/<service> in front of a service's instances (HTTP and gRPC)."""
