"""Few-shot data: class-indexed datasets, episodic task sampling, and dataset loaders.

``get_dataset(name, split, root, **options)`` is the single entry point (see
``metaprune.data.registry`` for names and options); the data root comes from ``root`` or the
``METAPRUNE_DATA`` environment variable, never from a hard-coded path.
"""

from .base import (
    ClassDataset,
    DataError,
    FileClassDataset,
    RotatedClasses,
    TensorClassDataset,
    list_class_folders,
    load_image,
)
from .download import download_omniglot, sha256_file, verify_omniglot_archive, verify_sha256
from .folders import cifarfs, cub, fc100, image_folder
from .glyphs import glyphs
from .miniimagenet import miniimagenet
from .omniglot import omniglot
from .registry import DATASETS, dataset_options, get_dataset, resolve_data_root
from .tasks import OffsetSampler, Task, TaskList, TaskSampler, TaskSpec, build_task

__all__ = [
    "DATASETS", "ClassDataset", "DataError", "FileClassDataset", "OffsetSampler",
    "RotatedClasses", "Task", "TaskList", "TaskSampler", "TaskSpec", "TensorClassDataset",
    "build_task", "cifarfs", "cub", "dataset_options", "download_omniglot", "fc100",
    "get_dataset", "glyphs", "image_folder", "list_class_folders", "load_image", "miniimagenet",
    "omniglot", "resolve_data_root", "sha256_file", "verify_omniglot_archive", "verify_sha256",
]
