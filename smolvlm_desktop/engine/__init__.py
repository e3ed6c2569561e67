"""The vision-language runtime: model folder -> images + chat -> streamed tokens.

No Qt, no network, and no writes of user data. The one thing it may write is ONNX Runtime's
optimised copy of each graph, and only into a cache folder the caller hands to
`VisionLanguageModel.load(cache_dir=...)` (the faces pass the user's cache dir); without one it
writes nothing. See types.py for the whole API a face needs.
"""
