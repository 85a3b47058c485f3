"""Datasets for spikeforge: IDX reading, MNIST / Fashion-MNIST / CIFAR-10 loading, batching.

Public API::

    from spikeforge.data import load_dataset, iterate_batches
    train = load_dataset("mnist-sample", "train")        # offline, 4,000 images
    x = train.as_float()                                  # float32 [N, 1, 28, 28] in [0, 1]
    for xb, yb in iterate_batches(x, train.labels, 128, shuffle=True):
        ...

Every bad-input error is a :class:`DataError` (a ``ValueError``) whose message
names the file or directories concerned.
"""

from .batching import iterate_batches, num_batches
from .cifar import (
    CIFAR10_CLASSES,
    RestrictedUnpickler,
    UnsafePickleError,
    cifar10_search_dirs,
    download_cifar10,
    find_cifar10_files,
    load_cifar10,
    read_cifar_binary,
    read_cifar_python,
    safe_load_pickle,
)
from .datasets import (
    CLASS_NAMES,
    DATASETS,
    SPLITS,
    ImageSet,
    dataset_names,
    find_idx_files,
    load_dataset,
    search_dirs,
    user_cache_dir,
)
from .errors import DataError, DataFileNotFoundError, DownloadError
from .idx import load_idx_pair, read_idx, write_idx

__all__ = [
    "CIFAR10_CLASSES",
    "CLASS_NAMES",
    "DATASETS",
    "SPLITS",
    "DataError",
    "DataFileNotFoundError",
    "DownloadError",
    "ImageSet",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "cifar10_search_dirs",
    "dataset_names",
    "download_cifar10",
    "find_cifar10_files",
    "find_idx_files",
    "iterate_batches",
    "load_cifar10",
    "load_dataset",
    "load_idx_pair",
    "num_batches",
    "read_cifar_binary",
    "read_cifar_python",
    "read_idx",
    "safe_load_pickle",
    "search_dirs",
    "user_cache_dir",
    "write_idx",
]
