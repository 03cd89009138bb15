"""Stage-style front: image stages."""
