"""How a shard stores each sample's teacher answer: the exact, compact and dense layouts.

The exact and compact layouts keep, per sample-epoch, the top-K logits (values and class indices)
and the log-sum-exp of the other C - K (`timm_kd.cache.top_k_logits`), in three arrays:

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
- `dense`: every one of the C logits, in class order, each rounded to 12 bits on its row's own
  range: `values` uint8 [N, 3 ceil(C / 2)] (two 12-bit codes in three bytes), `tail` float32
  [N, 2] (the row's lowest and highest logit); no indices. 3 ceil(C / 2) + 8 bytes: 1,508 B at
  C = 1,000, under half the compact layout's 3,258 B at K = C. A logit moves by at most its row's
  range / 8,190 (0.003 for a range of 25): on an ImageNet teacher the KD loss and its gradient
  stay within 0.05% of the full logits' at T = 1 and T = 4 (`benchmarks/cache_tail.py`), where
  top-K at K <= 100 leaves 5-97% of the gradient at T = 4. With `--view-cycle N`, N built epochs
  serve any schedule: ImageNet-1k at N = 8 takes 15.5 GB.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch

LAYOUTS = ('exact', 'compact', 'dense')
DENSE_STEPS = 4095  # the dense layout's codes: 12 bits, two in three bytes


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
        if self.name == 'dense':
            return {'values': (np.dtype(np.uint8), (slots, 3 * ((self.num_classes + 1) // 2))),
                    'tail': (np.dtype(np.float32), (slots, 2))}  # fmt: skip
        if self.name == 'compact':
            packed = (k * self.index_bits + 7) // 8
            return {'values': (np.dtype(np.float16), (slots, k)),
                    'indices': (np.dtype(np.uint8), (slots, packed)),
                    'tail': (np.dtype(np.float32), (slots, 2))}  # fmt: skip
        index = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
        return {'values': (np.dtype(self.value_dtype), (slots, k)),
                'indices': (np.dtype(index), (slots, k)),
                'tail': (np.dtype(np.float32), (slots,))}  # fmt: skip

    @classmethod
    def of_manifest(cls, manifest: Dict[str, Any]) -> 'Layout':
        """The layout a cache's manifest records (caches older than layouts are exact)."""
        m = manifest
        return cls(m.get('layout', 'exact'), m['top_k'], m['num_classes'], m['value_dtype'])

    def describe(self) -> str:
        """What a row holds, in words."""
        if self.name == 'dense':
            return f'every one of {self.num_classes} classes, 12 bits each'
        return f'top-{self.k} of {self.num_classes} classes'

    @property
    def parts(self) -> Tuple[str, ...]:
        """The arrays a shard of this layout holds."""
        return tuple(self.arrays(1))

    def bytes_per_sample(self) -> int:
        return sum(dtype.itemsize * int(np.prod(shape[1:])) for dtype, shape in
                   self.arrays(1).values())  # fmt: skip

    def encode(
        self, values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor
    ) -> Dict[str, np.ndarray]:
        """The arrays' rows for a batch of top-K answers (`top_k_logits`, values sorted)."""
        values, tail = values.float().cpu().numpy(), tail.float().cpu().numpy()
        indices = indices.cpu().numpy()
        if self.name == 'dense':
            return encode_dense(values, indices)
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
        if self.name == 'dense':
            values = torch.from_numpy(decode_dense(arrays, self.num_classes))
            n = len(values)  # every class, in order; none left out
            return values, torch.arange(self.num_classes).expand(n, -1), torch.full((n,), -math.inf)
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


def encode_dense(values: np.ndarray, indices: np.ndarray) -> Dict[str, np.ndarray]:
    """Every logit of each row (given as a top-C answer: values and their classes) in class
    order, as 12-bit codes on the row's [lowest, highest] range, two codes in three bytes."""
    n, classes = values.shape
    logits = np.empty_like(values)
    np.put_along_axis(logits, indices, values, axis=1)
    low, high = logits.min(1, keepdims=True), logits.max(1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    codes = np.zeros((n, classes + classes % 2), np.uint16)
    codes[:, :classes] = np.rint((logits - low) / span * DENSE_STEPS)
    first, second = codes[:, 0::2], codes[:, 1::2]
    packed = np.stack([first & 0xFF, (first >> 8) | ((second & 0xF) << 4), second >> 4], axis=2)
    return {
        'values': packed.astype(np.uint8).reshape(n, -1),
        'tail': np.concatenate([low, high], axis=1).astype(np.float32),
    }


def decode_dense(arrays: Dict[str, np.ndarray], classes: int) -> np.ndarray:
    """[N, C] float32 logits from `encode_dense`'s arrays."""
    packed = arrays['values'].reshape(len(arrays['values']), -1, 3).astype(np.uint16)
    first = packed[..., 0] | ((packed[..., 1] & 0xF) << 8)
    second = (packed[..., 1] >> 4) | (packed[..., 2] << 4)
    codes = np.stack([first, second], axis=2).reshape(len(packed), -1)[:, :classes]
    low, high = arrays['tail'][:, :1], arrays['tail'][:, 1:]
    return low + codes.astype(np.float32) * ((high - low) / DENSE_STEPS)
