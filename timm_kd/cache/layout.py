"""How a shard stores each sample's top-K teacher answer: the exact layout and the compact one.

Both keep, per sample-epoch, the top-K logits (values and class indices) and the log-sum-exp of
the other C - K (`timm_kd.cache.top_k_logits`), in the shard's three arrays:

- `exact` (the default): `values` float32 [N, K] (float16 with `--value-dtype float16`),
  `indices` int16 [N, K] (int32 beyond 32,767 classes), `tail` float32 [N]. 4K + 2K + 4 bytes: 64 B
  at K = 10, so ImageNet-1k x 300 epochs (384.4 M sample-epochs) takes 24.6 GB. Float32 is what
  the teacher answered: with K = C a cached run equals the live one.
- `compact`: `values` float16 [N, K], each minus the row's top logit (so the classes that carry
  the mass, near 0, keep float16's finest steps), `indices` packed to the bits the class count
  needs (10 for 1,000 classes: ceil(K x 10 / 8) bytes), `tail` float32 [N, 2] (the top logit, and
  the tail's log-sum-exp). 2K + ceil(K b / 8) + 8 bytes: 41 B at K = 10, 15.8 GB for ImageNet-1k x
  300 epochs. The KD loss moves by the rounding of the values (measured in
  `benchmarks/cache_topk_error.py`).
"""

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

LAYOUTS = ('exact', 'compact')


@dataclass(frozen=True)
class Layout:
    name: str
    k: int
    num_classes: int
    value_dtype: str = 'float32'  # the exact layout's values

    @property
    def index_bits(self) -> int:
        return max(1, (self.num_classes - 1).bit_length())

    def arrays(self, slots: int) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
        """The dtype and shape of each array of a shard of `slots` samples."""
        k = self.k
        if self.name == 'compact':
            packed = (k * self.index_bits + 7) // 8
            return {'values': (np.dtype(np.float16), (slots, k)),
                    'indices': (np.dtype(np.uint8), (slots, packed)),
                    'tail': (np.dtype(np.float32), (slots, 2))}  # fmt: skip
        index = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
        return {'values': (np.dtype(self.value_dtype), (slots, k)),
                'indices': (np.dtype(index), (slots, k)),
                'tail': (np.dtype(np.float32), (slots,))}  # fmt: skip

    def bytes_per_sample(self) -> int:
        return sum(dtype.itemsize * int(np.prod(shape[1:])) for dtype, shape in
                   self.arrays(1).values())  # fmt: skip

    def encode(
        self, values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor
    ) -> Dict[str, np.ndarray]:
        """The arrays' rows for a batch of top-K answers (`top_k_logits`, values sorted)."""
        values, tail = values.float().cpu().numpy(), tail.float().cpu().numpy()
        indices = indices.cpu().numpy()
        if self.name != 'compact':
            return {'values': values, 'indices': indices, 'tail': tail}
        top = values[:, :1]
        return {
            'values': (values - top).astype(np.float16),
            'indices': pack_indices(indices.astype(np.int64), self.index_bits),
            'tail': np.concatenate([top, tail[:, None]], axis=1),
        }

    def decode(
        self, arrays: Dict[str, np.ndarray]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values float32, indices int64, tail float32) of the rows read from a shard."""
        if self.name != 'compact':
            values, indices, tail = (arrays[p] for p in ('values', 'indices', 'tail'))
        else:
            offset, tail = arrays['tail'][:, 0], arrays['tail'][:, 1]
            values = arrays['values'].astype(np.float32) + offset[:, None]
            indices = unpack_indices(arrays['indices'], self.k, self.index_bits)
        return (torch.from_numpy(np.asarray(values, np.float32)),
                torch.from_numpy(np.asarray(indices, np.int64)),
                torch.from_numpy(np.asarray(tail, np.float32)))  # fmt: skip


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """[N, K] class indices < 2**bits as [N, ceil(K bits / 8)] bytes, little-endian bit order."""
    n, k = indices.shape
    digits = (indices[..., None] >> np.arange(bits)) & 1
    return np.packbits(digits.astype(np.uint8).reshape(n, k * bits), axis=1, bitorder='little')


def unpack_indices(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    digits = np.unpackbits(packed, axis=1, count=k * bits, bitorder='little')
    return (digits.reshape(-1, k, bits).astype(np.int64) << np.arange(bits)).sum(-1)
