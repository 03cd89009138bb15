"""Tasks of the stage front (NeMo Curator 1.x's ``nemo_curator.tasks``)."""
from nemo_aesthetic.tasks.document import DocumentBatch
from nemo_aesthetic.tasks.file_group import FileGroupTask
from nemo_aesthetic.tasks.image import ImageBatch, ImageObject
from nemo_aesthetic.tasks.tasks import EmptyTask, Task, _EmptyTask

__all__ = ["DocumentBatch", "EmptyTask", "FileGroupTask", "ImageBatch", "ImageObject", "Task", "_EmptyTask"]
