"""Speed benchmark: int8 ONNX, fp32 ONNX and transformers fp32 on the same random weights.

    .venv/bin/python bench/run.py [--threads 2] [--repeats 5] [--only int8,fp32,torch] [--json out.json]
    smolvlm-desktop bench [same options]

``arch`` builds (once, cached outside the repo) a random-weight model with the real
SmolVLM-256M architecture and exports it with the project's exporter; ``child`` measures one
configuration in its own process; ``run`` starts the children and prints one table of ratios.
"""
