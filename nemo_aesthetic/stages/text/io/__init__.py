"""Readers and writers of DocumentBatch tasks (NeMo Curator 1.x's ``stages.text.io``)."""
