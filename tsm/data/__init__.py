"""Data: what to load (``DataSpec``), sources and splits, samplers, the loader.

``load(spec, seed=...)`` gives a ``DatasetSplits`` of lazily decoded ``Split`` objects
(built-in offline sets, TFDS ArrayRecord sources); ``from_arrays(train=(x, y), ...)``
wraps your own arrays the same way. Samplers (:class:`Sampler`) turn a split's labels
into index batches (``MultiViewSampler``: every input twice, for two-view losses);
``batches`` decodes them on background threads.
"""

from tsm.data.datasets import as_splits
from tsm.data.datasets import from_arrays
from tsm.data.datasets import load
from tsm.data.loader import batches
from tsm.data.samplers import host_share
from tsm.data.samplers import make_sampler
from tsm.data.samplers import MultiViewSampler
from tsm.data.samplers import PKSampler
from tsm.data.samplers import RandomBatchSampler
from tsm.data.samplers import RandomPairSampler
from tsm.data.samplers import RandomTripletSampler
from tsm.data.samplers import repeat_views
from tsm.data.samplers import Sampler
from tsm.data.samplers import SAMPLINGS
from tsm.data.spec import DATASETS
from tsm.data.spec import DatasetNotPreparedError
from tsm.data.spec import DataSpec
from tsm.data.splits import DatasetSplits
from tsm.data.splits import Split

__all__ = [
    "as_splits", "batches", "DatasetNotPreparedError", "DATASETS", "DatasetSplits", "DataSpec",
    "from_arrays", "host_share", "load", "make_sampler", "MultiViewSampler", "PKSampler",
    "RandomBatchSampler", "RandomPairSampler", "RandomTripletSampler", "repeat_views", "Sampler",
    "SAMPLINGS", "Split",
]
