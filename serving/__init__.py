"""What the served models run and what their callers agree on: the contract (tensor names,
dtypes, defaults, limits), request parsing and validation, ranking, the served lists, similar
items, the blocklist, the ranking graph and ONNX Runtime's session options.

numpy only (ranking_graph also needs onnx, session_options onnxruntime), no project imports:
a repository build vendors this folder into each Python model's version folder, so the
repository runs unchanged in NVIDIA's container. Nothing is imported here, so a model that
needs only numpy never loads onnx.
"""
