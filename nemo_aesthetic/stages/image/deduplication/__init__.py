"""Image deduplication stages (NeMo Curator 1.x's ``stages.image.deduplication``)."""
