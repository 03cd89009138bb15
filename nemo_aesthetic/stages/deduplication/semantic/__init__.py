"""Semantic deduplication (NeMo Curator 1.x's ``nemo_curator.stages.deduplication.semantic``),
adapters over :mod:`nemo_aesthetic.dedup`, on Dask, CPU or GPU."""
from nemo_aesthetic.stages.deduplication.semantic.identify_duplicates import IdentifyDuplicatesStage
from nemo_aesthetic.stages.deduplication.semantic.kmeans import KMeansStage
from nemo_aesthetic.stages.deduplication.semantic.pairwise import PairwiseStage
from nemo_aesthetic.stages.deduplication.semantic.ranking import RankingStrategy
from nemo_aesthetic.stages.deduplication.semantic.workflow import SemanticDeduplicationWorkflow

__all__ = ["IdentifyDuplicatesStage", "KMeansStage", "PairwiseStage", "RankingStrategy",
           "SemanticDeduplicationWorkflow"]
