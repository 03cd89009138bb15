"""FileGroupTask: the files one partition reads (NeMo Curator 1.x's ``nemo_curator.tasks.file_group``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nemo_aesthetic.tasks.tasks import Task


@dataclass
class FileGroupTask(Task[list[str]]):
    """A group of files (paths or fsspec URLs). ``reader_config`` carries reader options such as
    fsspec ``storage_options``."""

    reader_config: dict = field(default_factory=dict)
    data: list[str] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return isinstance(self.data, list)

    def get_deterministic_id(self) -> str | None:
        return hashlib.sha256("|".join(sorted(map(str, self.data))).encode()).hexdigest()[:12] if self.data else None
