"""The one reader of the paper's published numbers, ``results/reference/paper_<table>_<size>.csv``.

Used by the tables and figures (``vppo.reporting``) and by ``vppo check --against paper:<model>/<method>``.
File name: ``paper_`` + a table name of :data:`vppo.catalog.TABLES` (it may contain ``_``) + ``_`` + a size tag
without ``_`` (``7b``); columns: ``model`` (the paper's model label, :data:`vppo.catalog.MODEL_PAPER_NAMES`),
``method`` or ``setting`` (the paper's row label, :data:`vppo.catalog.METHOD_PAPER_NAMES`), then benchmark
headers (``Benchmark.paper_name``) and ``Avg``. An empty cell is a number the paper does not report.

Labels match exactly (after stripping blanks). Anything else is an :class:`ReferenceError`, one line naming the
file, the row and the field. Torch- and pandas-free (csv module).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vppo.catalog import AVG, METHOD_PAPER_NAMES, MODEL_PAPER_NAMES, TABLES, column_key
from vppo.errors import InputError

PREFIX = "paper_"
ROW_FIELDS = ("method", "setting")


class ReferenceError(InputError, ValueError):
    """A reference CSV is malformed or does not have what was asked for (names the file, row and field)."""


def table_of(path: Path) -> str:
    """``paper_<table>_<size>.csv`` -> ``<table>`` (everything between the prefix and the last ``_``)."""
    stem = path.stem
    table, sep, size = stem[len(PREFIX):].rpartition("_")
    if not stem.startswith(PREFIX) or not sep or not table or not size:
        raise ReferenceError(f"{path}: file name: expected {PREFIX}<table>_<size>.csv (e.g. paper_main_7b.csv)")
    if table not in TABLES:
        raise ReferenceError(f"{path}: file name: table {table!r} is not in vppo.catalog.TABLES ({', '.join(TABLES)})")
    return table


@dataclass(frozen=True)
class ReferenceRow:
    table: str
    model: str  # the paper's label, e.g. Qwen2.5-VL-7B
    method: str  # the paper's row label, e.g. tas_only
    values: dict[str, float]  # benchmark key or "avg" -> percent
    source: str  # the CSV file
    line: int


def read_reference_file(path: str | Path) -> list[ReferenceRow]:
    path = Path(path)
    table = table_of(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        headers = [h.strip() for h in reader.fieldnames or []]
        row_field = next((f for f in ROW_FIELDS if f in headers), None)
        if "model" not in headers or row_field is None:
            raise ReferenceError(f"{path}: header: needs a 'model' and a 'method' (or 'setting') column")
        columns = {}
        for header in headers:
            if header in ("model", row_field):
                continue
            key = column_key(header)
            if key is None:
                raise ReferenceError(f"{path}: field {header!r}: not a benchmark's paper name (vppo.catalog) or "
                                     "'Avg'")
            columns[header] = key
        rows = []
        for raw in reader:
            record = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            line = reader.line_num
            label = record.get(row_field, "")
            if not record.get("model") or not label:
                raise ReferenceError(f"{path}: line {line}: field 'model'/{row_field!r}: empty")
            values = {}
            for header, key in columns.items():
                text = record.get(header, "")
                if not text:
                    continue
                try:
                    values[key] = float(text)
                except ValueError:
                    raise ReferenceError(f"{path}: line {line} (row {label!r}): field {header!r}: {text!r} is not "
                                         "a number") from None
            rows.append(ReferenceRow(table, record["model"], label, values, str(path), line))
    return rows


@dataclass(frozen=True)
class PaperReference:
    """Every row of every reference CSV of a folder, looked up by our model and method keys."""

    rows: tuple[ReferenceRow, ...]

    def _matching(self, model_key: str, method_key: str, table: str | None = None) -> list[ReferenceRow]:
        model = MODEL_PAPER_NAMES.get(model_key, model_key)
        method = METHOD_PAPER_NAMES.get(method_key)
        return [r for r in self.rows if r.model == model and r.method == method and table in (None, r.table)]

    def value(self, table: str, model_key: str, method_key: str, column: str) -> float | None:
        """The paper's number (benchmark key or ``avg``) of one table cell, or None where it has none."""
        for row in self._matching(model_key, method_key, table):
            if column in row.values:
                return row.values[column]
        return None

    def source(self, table: str, model_key: str) -> str | None:
        """The CSV holding ``table``'s rows for the paper model ``model_key`` (None: the paper has none)."""
        model = MODEL_PAPER_NAMES.get(model_key, model_key)
        return next((r.source for r in self.rows if r.table == table and r.model == model), None)

    def scores(self, model_key: str, method_key: str) -> dict[str, float]:
        """Every number the paper gives for (model, method) over all its tables; a column two tables give
        different values for raises, naming both files."""
        found: dict[str, tuple[float, ReferenceRow]] = {}
        for row in self._matching(model_key, method_key):
            for column, value in row.values.items():
                if column in found and found[column][0] != value:
                    other = found[column][1]
                    raise ReferenceError(f"{row.source}: line {row.line}: field {column!r}: {value} disagrees with "
                                         f"{other.source} line {other.line} ({found[column][0]})")
                found.setdefault(column, (value, row))
        return {column: value for column, (value, _) in found.items()}


def load_reference(reference_dir: str | Path) -> PaperReference:
    """Read every ``paper_*.csv`` of ``reference_dir`` (at least one must exist)."""
    root = Path(reference_dir)
    files = sorted(root.glob(f"{PREFIX}*.csv"))
    if not files:
        raise ReferenceError(f"{root}: no {PREFIX}<table>_<size>.csv files (the paper's numbers)")
    return PaperReference(tuple(row for path in files for row in read_reference_file(path)))


__all__ = ["AVG", "PaperReference", "ReferenceError", "ReferenceRow", "load_reference", "read_reference_file",
           "table_of"]
