"""Runs Triton: embedded from the nvidia-pytriton wheel, or NVIDIA's container (issue 4)."""
