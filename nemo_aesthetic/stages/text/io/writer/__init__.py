"""DocumentBatch writers (NeMo Curator 1.x's ``stages.text.io.writer``)."""
from nemo_aesthetic.stages.text.io.writer.parquet import ParquetWriter

__all__ = ["ParquetWriter"]
