"""The mini study's mini_control set: where its rows are and how they become docs (shared hooks: vppo.evaluation.tasklib)."""

from vppo.evaluation.tasklib import data_files, docs_processor

BENCHMARK = "mini_control"
DATA_FILES = data_files(BENCHMARK)
process_docs = docs_processor(BENCHMARK)
