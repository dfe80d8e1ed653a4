"""Images decoded as timm's `ImageDataset` decodes them, with two things a long run needs more.

- **Modes PIL converts badly.** A 16-bit image (PIL mode `I;16` or `I`) converted to RGB or L by
  PIL is clipped at 255, so a 16-bit PNG becomes almost white. Here it is scaled to 8 bits first
  (value / 257, 65535 -> 255), then converted. A CMYK, palette or other image gets PIL's own
  conversion, as in timm. Each process logs the first file of each kind it converted and how.
- **Each sample's bytes can be checked.** A teacher-output cache build records a checksum (CRC-32)
  of each sample's bytes as they are read (`start_recording`); a run from the cache checks the
  bytes it reads anyway against them (`verify`) and stops with one line naming the file, the epoch
  and how to rebuild: a file changed since the build, even at the same size and time, is never
  trained against the old teacher answers. Reading the bytes is what decoding does already.
- **Files that cannot be read are counted.** timm replaces an unreadable file (a zero-byte file,
  a truncated JPEG) with the next sample and logs a warning; here the replacements are also
  counted across loader workers (`skipped`), so the training loop can report them at the epoch's
  end and stop a run where too many fail.
"""

import io
import logging
import multiprocessing
import os
import zlib
from typing import Any, Optional, Set

import numpy as np
from PIL import Image

from .dataset_views import DatasetView
from .errors import KDError

_logger = logging.getLogger(__name__)
MAX_TRIES = 50  # consecutive unreadable files before the run stops (timm's `_max_retries`)
KNOWN = 1 << 32  # a recorded checksum: CRC-32 | KNOWN (0: the sample was not read)


def checksum(data: bytes) -> int:
    """A sample's recorded checksum: the CRC-32 of its bytes, marked as known."""
    return zlib.crc32(data) | KNOWN


def read_bytes(source: Any) -> bytes:
    """The bytes of what a timm reader hands out: a path, or a file object (tar member, record)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as f:
            return f.read()
    return source.read()


def to_mode(img: Image.Image, mode: str, seen: Set[str], name: Any = '') -> Image.Image:
    """`img` in PIL mode `mode`: 16-bit images scaled to 8 bits first (PIL's own conversion clips
    them), everything else by PIL. The first file of each converted kind is logged once (`seen`
    holds the kinds already logged by this process)."""
    if img.mode == mode:
        return img
    kind = img.mode
    if img.mode.startswith('I;16') or (img.mode == 'I' and np.asarray(img).max() > 255):
        pixels = np.asarray(img, dtype=np.float64) / 257.0
        img, how = Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8), 'L'), 'scaled'
    else:
        how = 'PIL'
    if kind not in seen and kind not in ('RGB', 'L', 'P', 'RGBA', 'LA', 'PA', '1'):
        seen.add(kind)
        rule = '16 bits scaled to 8 (value / 257)' if how == 'scaled' else "PIL's conversion"
        _logger.info(f'Decoding {kind} images to {mode} by {rule} (the first: {name})')
    return img.convert(mode)


class DecodedImages(DatasetView):
    """timm's `ImageDataset` (map-style, images as files or file objects) decoded with `to_mode`,
    unreadable files replaced by the next sample as timm does and counted in `skipped`."""

    def __init__(self, dataset: Any, mode: str):
        self.dataset, self.mode = dataset, mode
        self._skipped = multiprocessing.Value('q', 0)  # shared with the loader's workers
        self._seen: Set[str] = set()
        self._recorded: Optional[Any] = None  # a shared array of checksums, while recording
        self._expected: Optional[np.ndarray] = None  # the checksums to verify against
        self.checked_against = ''  # what the expected checksums come from, for the message
        self.epoch = 0  # set by `timm_kd.replay.ReplayableViews` before each training item

    def start_recording(self) -> None:
        """Record each sample's checksum as it is read, in every loader worker (call it before the
        loader starts its workers)."""
        self._recorded = multiprocessing.Array('Q', len(self.dataset.reader), lock=False)

    def recorded(self) -> np.ndarray:
        """The checksums recorded so far (0 where a sample was not read)."""
        return np.frombuffer(self._recorded, dtype=np.uint64).copy()

    def verify(self, expected: np.ndarray, against: str) -> None:
        """Check each sample read against `expected` (recorded by `against`: a cache build)."""
        self._expected, self.checked_against = expected, against

    @property
    def skipped(self) -> int:
        """Unreadable files replaced so far, in every process."""
        return self._skipped.value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # reader, targets, filenames(): the wrapped dataset's
        if name.startswith('_') or name in ('dataset', 'mode', 'checked_against', 'epoch'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _check(self, index: int, data: bytes) -> None:
        value = checksum(data)
        if self._recorded is not None:
            self._recorded[index] = value
        expected = self._expected[index] if self._expected is not None else 0
        if expected and expected != value:
            raise KDError(
                f'training file {self._name(index)} (sample {index}, epoch {self.epoch}) is not '
                f'the one {self.checked_against} was built from (its bytes changed); rebuild the '
                'cache with python -m timm_kd.cache build and the same flags, or restore the file'
            )

    def _name(self, index: int) -> str:
        try:
            return str(self.dataset.filename(index, absolute=True))
        except Exception:  # a reader of records without file names
            return f'record {index}'

    def __getitem__(self, index: int):
        reader = self.dataset.reader
        for _ in range(MAX_TRIES):
            source, target = reader[index][:2]
            try:
                data = read_bytes(source)
                if self._recorded is not None or self._expected is not None:
                    self._check(index, data)
                img = to_mode(Image.open(io.BytesIO(data)), self.mode, self._seen, source)
                break
            except OSError as e:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                _logger.warning(f'Skipped sample (index {index}). {e}')
                index = (index + 1) % len(reader)
        else:
            raise RuntimeError(f'Failed to load {MAX_TRIES} consecutive samples')
        if self.dataset.transform is not None:
            img = self.dataset.transform(img)
        if target is None:
            target = -1
        elif self.dataset.target_transform is not None:
            target = self.dataset.target_transform(target)
        return img, target


def decoded_images(dataset: Any) -> Any:
    """The `DecodedImages` under `dataset`'s wrappers (a loader's dataset, a subset), or None."""
    while dataset is not None and not isinstance(dataset, DecodedImages):
        dataset = getattr(dataset, 'dataset', None) if isinstance(dataset, DatasetView) else None
    return dataset
