"""Score CLIP embeddings you already have (embedding-reader / clip-retrieval layouts)."""
from nemo_aesthetic.embeddings.layouts import FORMATS, EmbeddingFileError
from nemo_aesthetic.embeddings.scoring import score_embeddings

__all__ = ["FORMATS", "EmbeddingFileError", "score_embeddings"]
