"""The last stage of the DAG: tables next to the paper's, figures, the HTML report, and `vppo analyze`.

``results_io`` loads and validates every input (eval results, the paper's CSVs, training logs, analyses);
``tables``, ``figures`` and ``report`` only format what it returns.
"""
