"""aerec client SDK over tritonclient (gRPC and HTTP)."""
from client.sdk import Recommendation, RecommenderClient

__all__ = ["Recommendation", "RecommenderClient"]
