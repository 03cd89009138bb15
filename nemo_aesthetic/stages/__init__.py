"""The stage-style front (NeMo Curator 1.x names) as thin adapters over the core."""
