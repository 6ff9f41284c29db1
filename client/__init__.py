"""aerec client SDK over tritonclient (gRPC and HTTP); filled in by the serving work (issue 4)."""
