"""avg@k evaluation through lmms-eval: task hooks, model adapters, runner, ``vppo eval`` / ``check`` / ``compare``.

Layout (data flows one way, top to bottom):

- ``protocol``: the pure parts of the avg@8 protocol (sampling, image pre-processing and bounds, scoring, avg@k, stderr).
- ``tasklib``: the lmms-eval task hooks shared by the eight task folders under ``benchmarks/`` (data from
  ``$VPPO_EVAL_DATA``, every row kept and keyed by index, images in place of ``<image>``, mathruler scoring).
- ``requests``: lmms-eval requests -> generation jobs (the k repeats of a question become one n=k job) and back.
- ``lmms_adapter`` (``vppo_hf``, transformers) and ``vllm_adapter`` (``vppo_vllm``): lmms-eval chat models,
  registered through the ``lmms_eval.models`` entry point (``registry``).
- ``runner``: loads the model once, runs lmms-eval's ``simple_evaluate`` per benchmark after checking the task's
  effective configuration and the model's image bounds against the protocol, and writes the result files (``results``, schema vppo.eval/1).
- ``cli`` (``vppo eval``), ``check`` (``vppo check``) and ``compare`` (``vppo compare``), on ``pairing`` (two
  result folders like for like, question by question) and ``paired`` (their statistics, pure functions).
"""
