"""What a training dataset can do, asked of the dataset itself rather than of its type's name: the
stream and the cache rely on these three capabilities.

- `replays_by_index`: a map-style dataset; each sample is read by its index, so an epoch's views
  replay from (seed, epoch, slot) whatever the workers (`timm_kd.replay.ReplayableViews`).
- `streams_shards`: a stream of webdataset shards, whose records `timm_kd.replay.ReplayableShards`
  deals to the readers by stream position, so a streamed epoch replays too.
- `decodes_files`: timm's `ImageDataset` reading image files (its own `__getitem__`, no raw bytes,
  no extra features), which `timm_kd.decoding.DecodedImages` decodes in its place: each file's
  bytes are checksummed and an unreadable one is replaced by the next sample.

Any other dataset (timm's hfids/, tfds/ streams, a subclass with its own reading) trains with
timm's own views; a cache then refuses it in one line.
"""

from typing import Any

from timm.data import ImageDataset
from timm.data.readers.reader_wds import ReaderWds
from torch.utils.data import IterableDataset


def replays_by_index(dataset: Any) -> bool:
    return not isinstance(dataset, IterableDataset)


def streams_shards(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset) and isinstance(
        getattr(dataset, 'reader', None), ReaderWds
    )


def decodes_files(dataset: Any) -> bool:
    return (
        isinstance(dataset, ImageDataset)
        and type(dataset).__getitem__ is ImageDataset.__getitem__
        and not getattr(dataset, 'load_bytes', False)
        and getattr(dataset, 'additional_features', None) is None
    )
