"""What identifies a run: its typed description (`timm_kd.run`) field by field.

Every dataclass field counts unless its metadata says otherwise: `NOT_IDENTITY` for what does not
change what a run computes (worker counts, validation settings, paths, logging), `FILE` for a path
whose file content counts rather than its name, `IF_SET` for a field added after runs were recorded:
it counts when it differs from its default, so a record written before it existed still matches a
run that leaves it at the default; `FILE_IF_SET` both (a value naming no file, a keyword such as
`--teacher-class-map auto`, counts as itself). A new field is therefore covered by construction.
"""

import dataclasses
import hashlib
import os
from typing import Any, Dict, Optional

NOT_IDENTITY = {'identity': False}
FILE = {'identity': 'file'}
IF_SET = {'identity': 'if-set'}
# a file's content, counted when set; a value that names no file (a keyword such as 'auto') as is
FILE_IF_SET = {'identity': 'file', 'if_set': True}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Optional[str]) -> Optional[str]:
    """How a `FILE` field counts: its file's content; unset as None; a value that names no file
    (a keyword such as 'auto') as is."""
    if not path:
        return None
    return sha256(path) if os.path.isfile(path) else path


def identity(value: Any, prefix: str = '') -> Dict[str, Any]:
    """The part of a run value (a dataclass) that identifies it, as a flat dict: a field's key is
    its name (or its metadata 'label'), nested dataclasses prefix theirs ('teacher checkpoint'), a
    tuple of several dataclasses numbers them ('teacher 2 checkpoint'); files count by content."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(value):
        kind = f.metadata.get('identity', True)
        if kind is False:
            continue
        v = getattr(value, f.name)
        if (kind == 'if-set' or f.metadata.get('if_set')) and v == f.default:
            continue
        key = ' '.join(p for p in (prefix, f.metadata.get('label', f.name)) if p)
        if dataclasses.is_dataclass(v):
            out.update(identity(v, key))
        elif isinstance(v, tuple) and v and all(dataclasses.is_dataclass(x) for x in v):
            for i, item in enumerate(v):
                out.update(identity(item, key if len(v) == 1 else f'{key} {i + 1}'))
        elif kind == 'file':
            out[key] = file_identity(v)
        else:
            out[key] = v
    return out
