"""Data sources, class-disjoint splits, samplers and loaders.

``load(data_config, seed=...)`` gives a ``DatasetSplits`` of lazily decoded ``Split``
objects; samplers turn a split's labels into index batches; ``loader.batches`` decodes
them on background threads.
"""

from tsm.data.config import check_data_config
from tsm.data.config import DatasetNotPreparedError
from tsm.data.config import DATASETS
from tsm.data.config import default_config
from tsm.data.datasets import load
from tsm.data.loader import batches
from tsm.data.samplers import host_share
from tsm.data.samplers import PKSampler
from tsm.data.samplers import RandomBatchSampler
from tsm.data.samplers import RandomPairSampler
from tsm.data.samplers import RandomTripletSampler
from tsm.data.splits import DatasetSplits
from tsm.data.splits import Split

__all__ = [
    "batches", "check_data_config", "DatasetNotPreparedError", "DATASETS",
    "DatasetSplits", "default_config", "host_share", "load", "PKSampler",
    "RandomBatchSampler", "RandomPairSampler", "RandomTripletSampler", "Split",
]
