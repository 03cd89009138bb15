"""NeMo Curator 1.x's ``nemo_curator.core`` names that tutorials use."""
