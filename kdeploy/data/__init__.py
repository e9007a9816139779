"""Datasets held whole in memory as uint8 tensors, and batches built by indexing them.

Knows nothing of distillation, export or benchmarks. Add a dataset with ``@register_dataset("name")`` on a
``LoadRequest -> RawData`` function.
"""

from kdeploy.data import cifar as _cifar  # noqa: F401  (registers cifar10, cifar100)
from kdeploy.data import idx as _idx  # noqa: F401  (registers mnist, fashion_mnist)
from kdeploy.data import imagefolder as _imagefolder  # noqa: F401  (registers imagefolder)
from kdeploy.data.batches import count_batches, iterate_batches, iterate_batches_with_views, shard_indices
from kdeploy.data.datasets import (
    DATASETS,
    Dataset,
    LoadRequest,
    RawData,
    Split,
    list_datasets,
    load_dataset,
    register_dataset,
)
from kdeploy.data.transforms import Augment, augment_batch, normalize, view_images

__all__ = [
    "DATASETS",
    "Augment",
    "Dataset",
    "LoadRequest",
    "RawData",
    "Split",
    "augment_batch",
    "count_batches",
    "iterate_batches",
    "iterate_batches_with_views",
    "list_datasets",
    "load_dataset",
    "normalize",
    "register_dataset",
    "shard_indices",
    "view_images",
]
