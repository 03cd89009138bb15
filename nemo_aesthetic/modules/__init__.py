"""NeMo Curator 0.x's ``nemo_curator.modules`` names that apply to images (``nemo_aesthetic.modules``)."""
