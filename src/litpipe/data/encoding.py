"""A table's columns as the network's inputs: numeric columns standardised, categorical ones one-hot, missing
values refused or imputed; every statistic from the training split's rows only.

prepare reads the table three times, a chunk at a time (data/table.py): `scan` (which columns are numbers, what
is missing, the target), `Encoding.fit` (the training rows' statistics) and `Encoding.transform` (each split's
rows). The encoding is saved in meta.json, so `litpipe predict` encodes a new CSV exactly as training did.

Encoded columns, in the order of data.features: a numeric column `x` gives `x` ((value - mean) / std); a
categorical one gives `x=<category>` for each category of the training split and `x=<other>` for a category it
never saw (0 or 1 each). With data.missing: impute, a column that has missing values gives `x_missing` too (1
where the value was missing, then filled with the training median, or the most frequent category).
"""

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from litpipe.data.table import Table
from litpipe.errors import StageError

OTHER = "<other>"  # the one-hot slot of a category the training split does not have
MOSTLY_NUMBERS = 0.9  # a text column whose values are this often numbers is a number column with typos
# A categorical column with more categories than this, and than half the training rows, is an identifier (a name,
# a date, an id): one-hot, it would be a column per row, which nothing can learn from.
CATEGORIES_MAX = 50


@dataclass
class Scan:
    """What one pass over the table found."""

    rows: int
    numeric: set[str]  # the feature columns whose values are all numbers (or missing)
    missing: dict[str, int]  # column -> missing values, of every column read
    target: pd.Series  # the target column, every row


def scan(table: Table, features: list[str]) -> Scan:
    columns = [*features, table.target]
    rows, missing = 0, dict.fromkeys(columns, 0)
    text: set[str] = set()
    numbers = dict.fromkeys(columns, 0)  # of the values of text columns, how many parse as numbers
    present = dict.fromkeys(columns, 0)
    targets = []
    for chunk in table.chunks(columns):
        rows += len(chunk)
        for column in columns:
            values = chunk[column]
            missing[column] += int(values.isna().sum())
            if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
                text.add(column)
                given = values.dropna()
                present[column] += len(given)
                numbers[column] += int(pd.to_numeric(given.astype(str), errors="coerce").notna().sum())
        targets.append(chunk[table.target])
    for column in text & set(features):
        _refuse_typos(table.name, column, present[column], numbers[column])
    target = pd.concat(targets, ignore_index=True) if targets else pd.Series(dtype=float)
    return Scan(rows, {column for column in features if column not in text}, missing, target)


def categorical_columns(features: list[str], found: Scan, categorical: set[str]) -> set[str]:
    """The features one-hot encoded: those data.categorical lists, and every column of text."""
    return {column for column in features if column in categorical or column not in found.numeric}


def refuse_typos(name: str, column: str, values: pd.Series) -> None:
    """Refuse a column of text whose values are numbers but for a few (a typo, "n/a"): it is a column of numbers."""
    parsed = pd.to_numeric(values.astype(str), errors="coerce").notna().sum()
    _refuse_typos(name, column, len(values), int(parsed))


def _refuse_typos(name: str, column: str, present: int, numbers: int) -> None:
    if present and MOSTLY_NUMBERS * present <= numbers < present:
        raise StageError(
            f"{name}: column {column!r} holds numbers, except {present - numbers} values that are not; correct them "
            "(or leave them empty), or list the column in data.categorical"
        )


@dataclass
class Column:
    name: str
    kind: str  # "numeric" or "categorical"
    mean: float = 0.0  # numeric: of the training rows
    std: float = 1.0
    categories: list[str] = field(default_factory=list)  # categorical: the training rows' own, sorted
    fill: float | str | None = None  # imputed: what a missing value becomes
    indicator: bool = False  # imputed: a column saying where the value was missing

    def names(self) -> list[str]:
        encoded = [self.name] if self.kind == "numeric" else [f"{self.name}={c}" for c in [*self.categories, OTHER]]
        return encoded + ([f"{self.name}_missing"] if self.indicator else [])


@dataclass
class Encoding:
    columns: list[Column]

    @property
    def names(self) -> list[str]:
        return [name for column in self.columns for name in column.names()]

    @property
    def text(self) -> set[str]:
        return {column.name for column in self.columns if column.kind == "categorical"}

    @classmethod
    def fit(
        cls, chunks: Iterator[pd.DataFrame], features: list[str], found: Scan, categorical: set[str], impute: bool
    ) -> "Encoding":
        """The encoding of `features` from the training rows in `chunks` (only those), whose categorical columns
        (`categorical_columns`) are read as text."""
        numeric = [column for column in features if column in found.numeric and column not in categorical]
        count, mean, m2 = np.zeros(len(numeric)), np.zeros(len(numeric)), np.zeros(len(numeric))
        seen = {column: pd.Series(dtype=np.int64) for column in features if column not in numeric}
        kept: dict[str, list[np.ndarray]] = {column: [] for column in numeric if impute and found.missing[column]}
        for chunk in chunks:
            values = chunk[numeric].to_numpy(dtype=np.float64)
            count, mean, m2 = _combine(count, mean, m2, values)
            for column, parts in kept.items():
                parts.append(chunk[column].dropna().to_numpy(dtype=np.float64))
            for column, counts in seen.items():
                seen[column] = counts.add(chunk[column].value_counts(), fill_value=0)
        columns = []
        for column in features:
            imputed = impute and found.missing[column] > 0
            if column in numeric:
                i = numeric.index(column)
                if not count[i]:  # nothing to standardise with, or to fill from
                    raise StageError(
                        f"column {column!r} has no value in the training rows; leave it out of data.features"
                    )
                std = float(np.sqrt(m2[i] / max(1, count[i] - 1)))
                fill = float(np.median(np.concatenate(kept[column]))) if imputed else None
                columns.append(
                    Column(column, "numeric", float(mean[i]), std if std > 0 else 1.0, fill=fill, indicator=imputed)
                )
            else:
                counts = seen[column]
                if len(counts) > CATEGORIES_MAX and len(counts) > counts.sum() / 2:
                    raise StageError(
                        f"column {column!r} has {len(counts)} different values in {int(counts.sum())} training rows: an "
                        "identifier, a name or a date, not a category; leave it out of data.features"
                    )
                fill = str(counts.sort_index().idxmax()) if imputed and len(counts) else None
                columns.append(
                    Column(
                        column, "categorical", categories=sorted(map(str, counts.index)), fill=fill, indicator=imputed
                    )
                )
        return cls(columns)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The rows of `frame` (categorical columns as text) encoded: float32, one row per row."""
        parts = []
        for column in self.columns:
            values = frame[column.name]
            missing = values.isna().to_numpy()
            if column.kind == "numeric":
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
                if column.fill is not None:
                    numbers = np.where(missing, column.fill, numbers)
                parts.append(((numbers - column.mean) / column.std)[:, None])
            else:
                filled = values.where(~missing, column.fill) if column.fill is not None else values
                codes = pd.Categorical(filled, categories=column.categories).codes  # -1: unseen (or missing)
                onehot = np.zeros((len(frame), len(column.categories) + 1))
                onehot[np.arange(len(frame)), np.where(codes < 0, len(column.categories), codes)] = 1
                parts.append(onehot)
            if column.indicator:
                parts.append(missing[:, None].astype(np.float64))
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)

    def unusable(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Rows of new data (`litpipe predict`) this encoding cannot encode: a value missing where training had
        none to fill, or text in a numeric column. Returns which rows, and why for each of them."""
        bad, reasons = np.zeros(len(frame), dtype=bool), [""] * len(frame)
        for column in self.columns:
            values = frame[column.name]
            missing = values.isna().to_numpy()
            problems = [(missing & (column.fill is None), "is missing (training had no missing value to fill)")]
            if column.kind == "numeric":
                text = pd.to_numeric(values, errors="coerce").isna().to_numpy() & ~missing
                problems.append((text, "is not a number"))
            for rows, why in problems:
                for row in np.flatnonzero(rows & ~bad):
                    reasons[row] = f"column {column.name!r} {why}"
                bad |= rows
        return bad, reasons

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        """Encoded rows back as the table's values (a category unseen in training as OTHER; an imputed value as
        missing), for tables a reader can check against the data."""
        frame, start = {}, 0
        for column in self.columns:
            width = len(column.names())
            block = x[:, start : start + width]
            if column.kind == "numeric":
                values = (block[:, 0].astype(np.float64) * column.std + column.mean).astype(
                    np.float32
                )  # as precise as stored
            else:
                values = np.asarray([*column.categories, OTHER], dtype=object)[
                    block[:, : len(column.categories) + 1].argmax(1)
                ]
            if column.indicator:
                values = np.where(block[:, -1] > 0.5, None if column.kind == "categorical" else np.nan, values)
            frame[column.name] = values
            start += width
        return pd.DataFrame(frame)

    def blocks(self) -> dict[str, slice]:
        """Each table column's encoded columns, as a slice of a row."""
        found, start = {}, 0
        for column in self.columns:
            width = len(column.names())
            found[column.name] = slice(start, start + width)
            start += width
        return found

    def to_meta(self) -> list[dict[str, Any]]:
        return [asdict(column) for column in self.columns]

    @classmethod
    def from_meta(cls, columns: list[dict[str, Any]]) -> "Encoding":
        return cls([Column(**column) for column in columns])


def _combine(
    count: np.ndarray, mean: np.ndarray, m2: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, mean and sum of squared deviations, with a chunk's values added (missing ones skipped), as
    Chan et al. combine them: as exact as one pass over all rows at once."""
    present = ~np.isnan(values)
    n = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        chunk_mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), 0.0)
    chunk_m2 = np.nansum(np.where(present, (values - chunk_mean) ** 2, 0.0), axis=0)
    total = count + n
    safe = np.maximum(total, 1)
    delta = chunk_mean - mean
    return total, mean + delta * n / safe, m2 + chunk_m2 + delta**2 * count * n / safe
