"""MMK12: where its rows are and how they become docs (the shared hooks are in vppo.evaluation.tasklib)."""

from vppo.evaluation.tasklib import data_files, docs_processor

BENCHMARK = "mmk12"
DATA_FILES = data_files(BENCHMARK)
process_docs = docs_processor(BENCHMARK)
