"""aerec client SDK over tritonclient (gRPC and HTTP)."""
from client.sdk import Recommendation, RecommenderClient, RecommenderError, RequestError, ServerError

__all__ = ["Recommendation", "RecommenderClient", "RecommenderError", "RequestError", "ServerError"]
