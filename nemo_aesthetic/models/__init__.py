"""Models of the stage front (NeMo Curator 1.x's ``nemo_curator.models``), backed by the core."""
