"""The admin key's wire format, shared by the launcher (which sets it) and the SDK (which sends it).

Triton's restricted-protocol setting checks one extra header on every call to the listed APIs;
gRPC carries it as metadata with Triton's fixed prefix.
"""
ADMIN_HEADER = "aerec-admin-key"
RESTRICTED = "model-repository,logging,trace,shared-memory"  # what only the admin key may call


def admin_headers(key: str, protocol: str) -> dict:
    """The header that unlocks the restricted APIs, in the form each protocol expects."""
    return {ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}": key}
