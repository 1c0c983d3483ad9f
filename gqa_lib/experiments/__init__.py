"""What the series measures (above ``models``). A picture of an experiment is ``gqa_lib.pictures.<name>``; the
command that ran it for the shipped CSV in ``data/results/`` is named beside it (the commands keep the names
the CSVs record).

- ``attention_roofline``: one decode step of attention against the machine's roofline
  (``benchmarks/decode_attention.py``);
- ``model_decode_speed``: SmolLM2's tokens per second (``benchmarks/decode_smollm.py``);
- ``token_cost``: what a token costs with and without a cache (notebook 01, no command);
- ``kv_sweep`` and ``corpus``: tiny models trained at every KV-head count on one corpus
  (``benchmarks/train_kv_sweep.py``);
- ``smollm_conversion``: SmolLM2 from 3 KV heads to fewer (``benchmarks/convert_smollm.py``);
- ``latent_conversion``: SmolLM2 to latent attention (``benchmarks/mla_smollm.py``);
- ``cache_shrink`` and ``cache_pareto``: every way to shrink SmolLM2's cache, bytes against loss
  (``benchmarks/cache_pareto.py``); ``token_eviction``: H2O, SnapKV, key norm and an oracle top-k, each
  scored per KV head or per query head (the GQA question), checked against step-by-step decoding;
- shared by them: ``machine`` (the machine's ceilings), ``stats`` (bootstrap, t, Holm), ``results`` (the CSVs:
  written whole or not at all, read back with ``results.load(name)``), ``bench_cli`` (the options, parsing and
  printing every benchmark command shares).
"""
