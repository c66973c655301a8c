"""A table's test rows as the values a reader knows (decoded from the network's inputs), beside the analysis's own
rows: the mistakes of a classification, the largest residuals of a regression."""

import pandas as pd
import torch

from litpipe.data.encoding import Encoding


def table_values(meta: dict, x: torch.Tensor) -> pd.DataFrame | None:
    """The test rows' values, from their encoding in meta.json (None for images)."""
    if meta.get("kind") != "table":
        return None
    return Encoding.from_meta(meta["encoding"]).decode(x.numpy())


def with_values(rows: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """`rows` (each naming its test sample in an `index` column) with that sample's values beside it."""
    return pd.concat([rows.reset_index(drop=True), values.iloc[rows["index"]].reset_index(drop=True)], axis=1)
