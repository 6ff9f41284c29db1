"""Deployment manifests for a built repository: Kubernetes objects, a Helm chart and a KServe
InferenceService for NVIDIA's Triton container (kubernetes.py), rendered offline. Nothing is
imported here: kserve_check runs in its own process and must not load tritonclient.
"""
