"""RankingStrategy under NeMo Curator 1.x's module path (defined in :mod:`nemo_aesthetic.dedup.ranking`)."""
from nemo_aesthetic.dedup.ranking import RankingStrategy

__all__ = ["RankingStrategy"]
