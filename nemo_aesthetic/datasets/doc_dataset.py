"""DocumentDataset (NeMo Curator 0.x's ``nemo_curator.datasets.DocumentDataset``): a Dask DataFrame
(``.df``) with the readers and writers the semantic-dedup cells of the image tutorial use."""
from __future__ import annotations

from typing import Literal

import dask.dataframe as dd
import pandas as pd


class DocumentDataset:
    """A thin wrapper of a Dask DataFrame, ``.df`` (pandas partitions on CPU, cuDF on GPU)."""

    def __init__(self, dataset_df: dd.DataFrame):
        self.df = dataset_df

    def __len__(self) -> int:
        return len(self.df)

    def persist(self) -> "DocumentDataset":
        return DocumentDataset(self.df.persist())

    def repartition(self, *args, **kwargs) -> "DocumentDataset":
        return self.__class__(self.df.repartition(*args, **kwargs))

    def head(self, n: int = 5):
        return self.df.head(n)

    @classmethod
    def read_parquet(cls, input_files: str | list[str], backend: Literal["pandas", "cudf"] = "pandas",
                     files_per_partition: int | None = None, blocksize: str | None = "1gb",
                     add_filename: bool | str = False, columns: list[str] | None = None,
                     **kwargs) -> "DocumentDataset":
        """Parquet file(s) or directories; ``backend`` "cudf" reads into cuDF partitions.
        ``files_per_partition`` and ``blocksize`` are accepted (dask sizes the partitions);
        ``add_filename`` is not supported."""
        if add_filename:
            raise NotImplementedError("DocumentDataset.read_parquet(add_filename=...) is not supported here")
        import dask

        with dask.config.set({"dataframe.backend": backend}):
            return cls(dd.read_parquet(input_files, columns=columns, **kwargs))

    def to_parquet(self, output_path: str, write_to_filename: bool | str = False, keep_filename_column: bool = False,
                   partition_on: str | None = None) -> None:
        if write_to_filename:
            raise NotImplementedError("DocumentDataset.to_parquet(write_to_filename=...) is not supported here")
        self.df.to_parquet(output_path, write_index=False, partition_on=partition_on)

    @classmethod
    def from_pandas(cls, data: pd.DataFrame, npartitions: int | None = 1, chunksize: int | None = None,
                    sort: bool | None = True, name: str | None = None) -> "DocumentDataset":
        """``data`` with the dtypes it has (:func:`~nemo_aesthetic.engine.partitions.keep_dtypes`)."""
        from nemo_aesthetic.engine.partitions import keep_dtypes

        with keep_dtypes():
            return cls(dd.from_pandas(data, npartitions=npartitions, chunksize=chunksize, sort=sort))

    def to_pandas(self) -> pd.DataFrame:
        return self.df.to_backend("pandas").compute()
