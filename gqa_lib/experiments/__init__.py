"""What the series measures (above ``models``): each module's benchmark is ``benchmarks/<name>.py`` or
named in its docstring, and what it measures is drawn by ``gqa_lib.pictures.<name>`` where there is a picture.

- ``attention_roofline``: one decode step of attention against the machine's roofline;
- ``model_decode_speed``: SmolLM2's tokens per second; ``token_cost``: what a token costs with and without a cache;
- ``kv_sweep`` and ``corpus``: training tiny models at every KV-head count on one corpus;
- ``smollm_conversion``: SmolLM2 from 3 KV heads to fewer; ``latent_conversion``: SmolLM2 to latent attention;
- ``cache_shrink`` and ``cache_pareto``: every way to shrink SmolLM2's cache, bytes against loss;
- ``results``: the stored CSVs in ``data/results/`` and what every benchmark command shares.
"""
