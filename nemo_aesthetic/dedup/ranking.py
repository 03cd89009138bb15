"""RankingStrategy (NeMo Curator 1.x's ``semantic.ranking``): the order in which a cluster's rows
claim to be kept. A row is removed when it is a near-copy of a row ranked BEFORE it, so the first
of every group of copies stays. Works on pandas and cuDF frames alike (``sort_values``/``sample``)."""
from __future__ import annotations

from typing import Literal


class RankingStrategy:
    """Sort by ``metadata_cols`` (``ascending`` one bool or one per column), or shuffle with
    ``strategy="random"`` and ``random_seed``."""

    def __init__(self, metadata_cols: list[str], ascending: list[bool] | bool = True,
                 strategy: Literal["sort", "random"] = "sort", random_seed: int = 42):
        self.metadata_cols = metadata_cols
        self.strategy = strategy
        self.random_seed = random_seed
        if isinstance(ascending, bool):
            self.ascending = [ascending] * len(metadata_cols)
        else:
            if len(ascending) != len(metadata_cols):
                raise ValueError(f"Length of ascending ({len(ascending)}) must match metadata_cols "
                                 f"({len(metadata_cols)})")
            self.ascending = ascending

    def rank_cluster(self, cluster_df):
        """The cluster's rows in keeping order (index reset)."""
        if self.strategy == "random":
            return cluster_df.sample(frac=1, random_state=self.random_seed, ignore_index=True)
        if self.strategy == "sort":
            missing = [c for c in self.metadata_cols if c not in cluster_df.columns]
            if missing:
                raise ValueError(f"Required columns {missing} not found in cluster data. "
                                 f"Available columns: {list(cluster_df.columns)}")
            if not self.metadata_cols:
                return cluster_df.reset_index(drop=True)
            return cluster_df.sort_values(by=self.metadata_cols, ascending=self.ascending, ignore_index=True)
        raise ValueError(f"Invalid strategy: {self.strategy}. Supported: 'sort', 'random'")

    @classmethod
    def metadata_based(cls, metadata_cols: list[str], ascending: list[bool] | bool = True,
                       random_seed: int = 42) -> "RankingStrategy":
        return cls(metadata_cols=metadata_cols, ascending=ascending, strategy="sort", random_seed=random_seed)

    @classmethod
    def random(cls, random_seed: int = 42) -> "RankingStrategy":
        return cls(metadata_cols=[], strategy="random", random_seed=random_seed)

    @classmethod
    def by_distance(cls, which_to_keep: str, sim_metric: str, id_field: str, random_seed: int = 42):
        """Upstream's ``which_to_keep``: "hard" keeps the rows farthest from their centroid,
        "easy" the closest, "random" any; ties broken by id."""
        if which_to_keep == "random":
            return cls.random(random_seed)
        if sim_metric not in {"cosine", "l2"}:
            raise ValueError(f"Invalid similarity metric: {sim_metric}. Only 'cosine' and 'l2' are supported.")
        if which_to_keep not in {"hard", "easy"}:
            raise ValueError(f"Invalid which_to_keep value: {which_to_keep}. Supported: 'hard', 'easy', 'random'")
        distance = "cosine_dist_to_cent" if sim_metric == "cosine" else "l2_dist_to_cent"
        ascending = which_to_keep == "easy"
        return cls(metadata_cols=[distance, id_field], ascending=[ascending, ascending])

    def __repr__(self) -> str:
        return (f"RankingStrategy(metadata_cols={self.metadata_cols}, ascending={self.ascending}, "
                f"strategy={self.strategy!r}, random_seed={self.random_seed})")
