"""ModelInterface (NeMo Curator 1.x's ``nemo_curator.models.base``): how stages load models."""
from __future__ import annotations

import abc


class ModelInterface(abc.ABC):
    """A model a stage sets up on the worker: ``model_id_names`` says which weights it uses."""

    @property
    @abc.abstractmethod
    def model_id_names(self) -> list[str]:
        """The model ids (Hugging Face style names) this model's weights come from."""

    @abc.abstractmethod
    def setup(self) -> None:
        """Load the weights (once per worker process: the loaded model is cached there)."""
