"""Semantic deduplication under NeMo Curator 0.x's names, over :mod:`nemo_aesthetic.dedup`."""
from nemo_aesthetic.modules.semantic_dedup.clusteringmodel import ClusteringModel
from nemo_aesthetic.modules.semantic_dedup.semanticclusterleveldedup import SemanticClusterLevelDedup

__all__ = ["ClusteringModel", "SemanticClusterLevelDedup"]
