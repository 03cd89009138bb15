"""NeMo Curator 0.x's ``nemo_curator.utils`` module paths, re-exporting this package's code."""
