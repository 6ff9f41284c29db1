"""aerec client SDK over tritonclient (gRPC and HTTP)."""
from client.sdk import (NoServerError, Recommendation, RecommenderClient, RecommenderError, RequestError,
                        ServerError)

__all__ = ["NoServerError", "Recommendation", "RecommenderClient", "RecommenderError", "RequestError", "ServerError"]
