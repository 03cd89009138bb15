"""Deduplication stages (NeMo Curator 1.x's ``nemo_curator.stages.deduplication``)."""
