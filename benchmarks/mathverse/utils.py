"""MathVerse: where its rows are and how they become docs (the shared hooks are in vppo.evaluation.tasklib)."""

from vppo.evaluation.tasklib import data_files, docs_processor

BENCHMARK = "mathverse"
DATA_FILES = data_files(BENCHMARK)
process_docs = docs_processor(BENCHMARK)
