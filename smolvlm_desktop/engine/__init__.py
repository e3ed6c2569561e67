"""The vision-language runtime: model folder -> images + chat -> streamed tokens.

No Qt, no network, no file writes. See types.py for the whole API a face needs.
"""
