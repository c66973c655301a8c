"""Tables: rows of measurements with a target column, from a CSV or Parquet file (data.dataset: table, data.root
the file) or embedded in scikit-learn (diabetes: regression; wine: classification).

A table is read a chunk of rows at a time, in order, as often as prepare needs (data/encoding.py): prepare never
holds more than a chunk of it, plus one number per row for the split, so a file larger than memory prepares.
"""

import csv
import difflib
import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn import datasets

from litpipe.config import DataParams
from litpipe.errors import StageError

CHUNK_ROWS = 50_000
SNIFFED = 64 * 1024  # characters read to tell a CSV file's delimiter
DELIMITERS = ",;\t|"
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Table:
    name: str  # the file, or the embedded table's name, for messages
    columns: list[str]
    target: str  # the column to predict
    # Chunks of rows, in order, of the named columns; those in the set as text (categories), missing as NaN.
    read: Callable[[list[str], set[str]], Iterator[pd.DataFrame]]
    read_from: Path | None = None  # the file, for a table that has one

    def chunks(self, columns: list[str], text: set[str] = frozenset()) -> Iterator[pd.DataFrame]:
        return self.read(columns, set(text))


def load(params: DataParams) -> Table:
    """data.dataset: table — the CSV or Parquet file data.root names."""
    path = Path(params.root)
    if not path.is_file():
        raise StageError(f"data.root {path} is not a file; data.dataset table reads a .csv or .parquet file")
    if params.target is None:
        raise StageError("data.target is null; data.dataset table needs the name of the column to predict")
    return _checked(from_file(path, params.target), params)


def from_file(path: Path, target: str = "") -> Table:
    """The CSV or Parquet file at `path`, by its suffix."""
    if path.name.endswith(PARQUET_SUFFIXES):
        columns, read = _parquet(path)
    elif path.name.endswith(CSV_SUFFIXES):
        columns, read = _csv(path)
    else:
        raise StageError(f"{path}: not a table file; name a {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)} file")
    return Table(str(path), columns, target, read, path)


def load_diabetes(params: DataParams) -> Table:
    """scikit-learn's diabetes measurements in their own units (442 patients, 10 features; sex is 1 or 2): a
    number to predict, disease progression a year later."""
    frame = datasets.load_diabetes(as_frame=True, scaled=False).frame
    return _checked(_embedded("diabetes", frame, params.target or "target"), params)


def load_wine(params: DataParams) -> Table:
    """scikit-learn's wine: 178 wines, 13 chemical measurements, 3 cultivars to tell apart."""
    bunch = datasets.load_wine(as_frame=True)
    frame = bunch.frame.assign(target=np.asarray(bunch.target_names)[bunch.target])
    return _checked(_embedded("wine", frame, params.target or "target"), params)


def _embedded(name: str, frame: pd.DataFrame, target: str) -> Table:
    def read(columns: list[str], text: set[str]) -> Iterator[pd.DataFrame]:
        for start in range(0, len(frame), CHUNK_ROWS):
            yield _as_text(frame.iloc[start : start + CHUNK_ROWS][columns].reset_index(drop=True), text)

    return Table(name, [str(column) for column in frame.columns], target, read)


def _csv(path: Path) -> tuple[list[str], Callable[[list[str], set[str]], Iterator[pd.DataFrame]]]:
    try:
        sep, decimal = dialect(path)
        columns = [str(column) for column in pd.read_csv(path, sep=sep, nrows=0).columns]
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise StageError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None

    def read(wanted: list[str], text: set[str]) -> Iterator[pd.DataFrame]:
        options = {"sep": sep, "decimal": decimal, "usecols": wanted, "chunksize": CHUNK_ROWS}
        options["dtype"] = dict.fromkeys(text, str)
        try:
            with pd.read_csv(path, **options) as reader:
                for chunk in reader:
                    yield chunk[wanted]
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
            raise StageError(f"{path}: {str(error).splitlines()[0]}") from None

    return columns, read


def dialect(path: Path) -> tuple[str, str]:
    """The file's delimiter and decimal mark, from its first lines: `,` or `;` (with decimal commas, as spreadsheets
    write CSV where the comma is the decimal mark), a tab or `|`."""
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", errors="replace") as file:
        sample = file.read(SNIFFED)
    whole = sample[: sample.rfind("\n") + 1] or sample  # complete lines only
    try:
        sep = csv.Sniffer().sniff(whole, delimiters=DELIMITERS).delimiter
    except csv.Error:  # rows too long for the sample, or nothing to tell by: the header line's most frequent one
        header = whole.partition("\n")[0]
        sep = max(DELIMITERS, key=header.count) if any(d in header for d in DELIMITERS) else ","
    fields = [field.strip().strip('"') for line in whole.splitlines()[1:] for field in line.split(sep)]
    commas = any(re.fullmatch(r"-?\d+,\d+", field) for field in fields)
    points = any(re.fullmatch(r"-?\d*\.\d+", field) for field in fields)
    return sep, "," if sep != "," and commas and not points else "."


def _parquet(path: Path) -> tuple[list[str], Callable[[list[str], set[str]], Iterator[pd.DataFrame]]]:
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise StageError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    columns = list(file.schema_arrow.names)

    def read(wanted: list[str], text: set[str]) -> Iterator[pd.DataFrame]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
            decimals = [i for i, field in enumerate(batch.schema) if pa.types.is_decimal(field.type)]
            for i in decimals:  # exact decimals (money, from databases) are numbers, not Python objects
                batch = batch.set_column(i, batch.schema.field(i).name, batch.column(i).cast(pa.float64()))
            yield _as_text(batch.to_pandas()[wanted], text)

    return columns, read


def _as_text(frame: pd.DataFrame, text: set[str]) -> pd.DataFrame:
    """The `text` columns as strings (a category's name), missing values kept missing."""
    for column in text:
        values = frame[column]
        frame[column] = values.astype(object).where(values.isna(), values.map(category_text))
    return frame


def category_text(value: object) -> str:
    """A category's name: a whole number as an integer whatever its type (1, 1.0 and a float read where a chunk had
    a gap are all "1"), anything else as written."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _checked(table: Table, params: DataParams) -> Table:
    """Every column params name exists (one line naming the first that does not, and its nearest match)."""
    named = [("data.target", table.target)]
    named += [("data.features", column) for column in params.features or []]
    named += [("data.categorical", column) for column in params.categorical]
    for key, column in named:
        if column not in table.columns:
            close = difflib.get_close_matches(column, table.columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(table.columns[:12]) + (", ..." if len(table.columns) > 12 else "")
            raise StageError(f"{key}: {table.name} has no column {column!r}{hint}; its columns: {shown}")
    if len(set(table.columns)) != len(table.columns):
        repeated = next(column for column in table.columns if table.columns.count(column) > 1)
        raise StageError(f"{table.name}: the column {repeated!r} appears twice; give each column its own name")
    return table
