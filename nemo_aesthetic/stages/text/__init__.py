"""Text stages (NeMo Curator 1.x): only the Parquet writer the image dedup tutorial uses."""
