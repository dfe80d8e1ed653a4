"""A cache that travels: a built cache published as a Hugging Face dataset repository, and a run
that downloads only the shards it trains from.

- `push(DIR, ORG/NAME)` uploads the manifest, every committed shard and sidecar, and a card
  (`card`): teacher, recipe flags, K, layout, epochs, world size, fingerprint, disk size and the
  KD loss error the top-K storage adds.
- `--teacher-cache hf-hub:ORG/NAME[@REVISION]` (`open_cache`) downloads the manifest first, checks
  the run against it, then fetches the shards of the epochs still to train and of this process's
  rank only, through `huggingface_hub` (its cache directory, HF_HOME, HF_ENDPOINT, HF_TOKEN and
  HF_HUB_OFFLINE: offline, what is already in the local Hub cache serves).

The dataset signature in the fingerprint is relative to the data root, so a cache built on one
machine serves another holding the same files under another path.
"""

import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import KDError, hub_problem
from . import TeacherCache
from .layout import Layout
from .shards import PARTS, shard_files

HUB_PREFIX = 'hf-hub:'
REPO_TYPE = 'dataset'


def parse_hub_spec(spec: str) -> Tuple[str, Optional[str]]:
    """'hf-hub:ORG/NAME@REV' -> ('ORG/NAME', 'REV' or None)."""
    repo = spec[len(HUB_PREFIX) :]
    repo, _, revision = repo.partition('@')
    if repo.count('/') != 1 or not all(repo.split('/')):
        raise KDError(
            f'--teacher-cache {spec!r}: name the repository as hf-hub:ORG/NAME[@REVISION]'
        )
    return repo, revision or None


def shard_patterns(
    epochs: Iterable[int], ranks: Iterable[int], parts: Sequence[str] = PARTS
) -> List[str]:
    """The file names of the shards of `epochs` x `ranks` (the arrays of `parts`, by default any
    layout's, and the sidecars)."""
    return [
        os.path.basename(path)
        for epoch in epochs
        for rank in ranks
        for path in shard_files('', epoch, rank, parts).values()
    ]


def pull(repo_id: str, revision: Optional[str] = None, epochs: Sequence[int] = (),
         ranks: Sequence[int] = (0,), cache_dir: Optional[str] = None) -> str:  # fmt: skip
    """Download the manifest, the card and the shards of `epochs` x `ranks`; returns the local
    folder (a snapshot in huggingface_hub's cache, files already there are not fetched again)."""
    import huggingface_hub

    patterns = ['manifest.json', 'README.md', 'samples-rank-*.npy', *shard_patterns(epochs, ranks)]
    try:
        return huggingface_hub.snapshot_download(
            repo_id, repo_type=REPO_TYPE, revision=revision, allow_patterns=patterns,
            cache_dir=cache_dir, library_name='timm-kd',
        )  # fmt: skip
    except Exception as e:  # offline with nothing cached, 401/404, network errors
        raise KDError(
            f'cannot download the teacher cache hf-hub:{repo_id} ({hub_problem(e)})'
        ) from None


class HubTeacherCache(TeacherCache):
    """A cache on the Hub: its manifest and card downloaded at once, its shards by `fetch`, which
    `TeacherCache.check` calls for the epochs and rank the run trains once the run fits."""

    def __init__(self, repo_id: str, revision: Optional[str] = None):
        self.repo_id, self.revision = repo_id, revision
        super().__init__(pull(repo_id, revision))

    def fetch(self, epochs: Sequence[int], rank: int) -> None:
        pull(self.repo_id, self.revision, epochs, [rank])


def open_cache(spec: str) -> TeacherCache:
    """`--teacher-cache DIR`, or `hf-hub:ORG/NAME[@REVISION]` (`HubTeacherCache`)."""
    if not spec.startswith(HUB_PREFIX):
        return TeacherCache(spec)
    return HubTeacherCache(*parse_hub_spec(spec))


def card(root: str, manifest: Dict[str, Any], repo_id: str) -> str:
    """The dataset card: what the cache was built from and for, and what its storage costs."""
    fp = manifest['fingerprint']
    size = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root))
    epochs, ranks = manifest['epochs'], world_size(manifest)
    samples = manifest['slots_per_rank'] * ranks
    teacher = fp['teacher'].get('members') or fp['teacher']
    lines = [
        '---', 'tags:', '- timm-kd', '- knowledge-distillation', '- teacher-cache', '---', '',
        f'# {repo_id}: a timm-kd teacher-output cache', '',
        "A teacher's answers (its top-K logits, or every logit in the dense layout) for every "
        'augmented view of a training run, built with `python -m timm_kd.cache build`. Train '
        'from it with', '',
        '```bash', f'timm-kd-train DATA ...the same data flags... --teacher-cache hf-hub:{repo_id}',
        '```',
        '', 'A run whose data, augmentation or teacher differs is refused in one line.', '',
        f'A schedule longer than the {len(epochs)} epochs built trains with `--view-cycle '
        f'{len(epochs)}`: epoch e replays the views of epoch e mod {len(epochs)}, so the student '
        'sees fewer distinct views (its order, crops, augmentation and mixing repeat every '
        f'{len(epochs)} epochs) and keeps its targets (the stored answers are those for the '
        'images it sees).', '',
        '| | |', '|---|---|',
        f'| teacher | `{json.dumps(teacher)}` |',
        f'| stored | {Layout.of_manifest(manifest).describe()} |',
        f'| layout | {manifest.get("layout", "exact")}, {manifest.get("bytes_per_sample", "?")} B '
        'per sample-epoch |',
        f'| epochs | {len(epochs)} ({epochs[0]}-{epochs[-1]}) |' if epochs else '| epochs | none |',
        f'| world size | {ranks} |',
        f'| samples per epoch | {samples} |',
        f'| disk | {size / 2**20:.1f} MiB |', '',
        '## KD loss error of the stored answers', '',
        'KL(p_T(teacher) || p_T(student)) x T^2 from the stored top-K answers against the full '
        'logits, on the first batch of the build, with a uniform student:', '',
        '| T | full logits | stored | relative error |', '|---|---|---|---|',
        *[f'| {r["temperature"]} | {r["exact"]} | {r["top_k"]} | {r["relative_error"]} |'
          for r in manifest.get('loss_error', [])],
        '', '## Recipe flags and fingerprint', '',
        '```json', json.dumps(fp, indent=1, sort_keys=True), '```', '',
    ]  # fmt: skip
    return '\n'.join(lines)


def push(root: str, repo_id: str, private: bool = False, revision: Optional[str] = None) -> str:
    """Publish a built cache as the dataset repository `repo_id` in one commit: the manifest,
    every committed shard with its sidecar, and the card."""
    import huggingface_hub

    if not os.path.isfile(os.path.join(root, 'manifest.json')):
        raise KDError(
            f'{root!r} holds no manifest.json: push the --out folder of a finished python -m '
            'timm_kd.cache build'
        )
    cache = TeacherCache(root)
    epochs, ranks = cache.manifest['epochs'], range(world_size(cache.manifest))
    names = ['manifest.json', *shard_patterns(epochs, ranks, cache.layout.parts)]
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise KDError(f'{root!r} lacks {missing[0]}; complete the build before pushing')
    names += sorted(n for n in os.listdir(root) if re.fullmatch(r'samples-rank-\d+\.npy', n))
    ops = [huggingface_hub.CommitOperationAdd(n, os.path.join(root, n)) for n in names]
    text = card(root, cache.manifest, repo_id).encode()
    ops.append(huggingface_hub.CommitOperationAdd('README.md', text))
    try:
        api = huggingface_hub.HfApi(library_name='timm-kd')
        repo_id = api.create_repo(
            repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True
        ).repo_id
        if revision:
            api.create_branch(repo_id, repo_type=REPO_TYPE, branch=revision, exist_ok=True)
        api.create_commit(repo_id, ops, repo_type=REPO_TYPE, revision=revision,
                          commit_message='Add teacher cache (timm-kd)')  # fmt: skip
    except Exception as e:
        raise KDError(f'cannot push the teacher cache to {repo_id} ({hub_problem(e)})') from None
    return repo_id


def world_size(manifest: Dict[str, Any]) -> int:
    """The number of ranks (one shard each per epoch) a cache was built with."""
    return int(manifest['fingerprint']['views'].get('world_size', 1))
