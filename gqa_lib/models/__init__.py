"""Real and tiny models: their shapes and their weights (above ``core``).

- ``catalog``: ``ModelSpec`` and the published shapes in ``data/models.json``;
- ``tiny_lm``: a small decoder built from ``core``'s attention, for training on a laptop;
- ``smollm``: SmolLM2-135M-Instruct loaded offline from its GGUF file, and its attention captured;
- ``smollm_decoder``: SmolLM2 rebuilt around ``core``'s attention; ``llama_shapes``: a LLaMA layer's shapes.
"""
