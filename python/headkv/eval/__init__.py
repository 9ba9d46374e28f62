"""Evaluation harness (``headkv-eval``): does a compressed KV cache keep the answers?

Tasks (``niah``, ``reasoning-needles``, ``longbench``, ``loogle``, ``fidelity``) x KV methods x
budgets over one GGUF; see EVALUATION.md. Modules: metrics (scores), longbench / loogle (data
formats, prompts, official metrics), niah (needle tasks), fidelity (compressed vs full cache),
engine (models, prompts, greedy decoding), runner (resumable grid), report (tables, plots), cli.
"""
