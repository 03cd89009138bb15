"""Alias of :mod:`nemo_aesthetic.tasks` (the stage front's tasks used to live here)."""
from nemo_aesthetic.tasks import EmptyTask, FileGroupTask, ImageBatch, ImageObject, Task  # noqa: F401
