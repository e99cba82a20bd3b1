"""avg@k evaluation through lmms-eval: task hooks (``tasklib``), model adapters, runner, ``vppo eval`` / ``vppo check``.

Layout: ``protocol`` holds the pure parts of PROTOCOL.md section 5 (sampling defaults, image bounds, row
parsing, avg@k and its standard error); ``tasklib`` the lmms-eval task hooks shared by the eight task folders
under ``benchmarks/``; ``lmms_adapter`` the CPU/HF model and ``vllm_adapter`` the cluster model, both
registered through lmms-eval's ``lmms_eval.models`` entry point; ``runner`` drives lmms-eval's evaluator and
turns its per-sample logs into our result JSON.
"""
