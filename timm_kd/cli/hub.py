"""Export distilled students as timm Hugging Face Hub folders, and publish them.

    python -m timm_kd.hub export CHECKPOINT --model ARCH[.TAG] --out DIR [--repo-id ORG/NAME]
    python -m timm_kd.hub push CHECKPOINT --model ARCH[.TAG] --repo-id ORG/NAME [--private]
        [--revision BRANCH] [--overwrite-card]

CHECKPOINT is a timm-kd training checkpoint (its EMA weights when present; --no-ema for the raw
ones), a bare state_dict, a .safetensors file, or a VanillaKD release file (ConvNeXt-V2 in FAIR's
key layout included: keys are converted by the architecture's own timm `checkpoint_filter_fn`).
Loading never runs pickled code. The folder holds `model.safetensors` and `config.json` (written by
timm's `save_for_hf`, loadable by plain timm as `hf-hub:ORG/NAME`) with our KD metadata under a
top-level "kd" key, and a `README.md` model card (card.py). Only the student is exported: KD
projectors, embeddings and auxiliary heads live in the checkpoint's task state and never reach the
weights.
"""

import argparse
import json

from ..errors import one_line_errors
from ..hub import export, push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_kd.hub',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', required=True)
    for command in ('export', 'push'):
        p = sub.add_parser(command)
        p.add_argument('checkpoint', help='a training checkpoint, state_dict or .safetensors file')
        p.add_argument(
            '--model', required=True, help='timm architecture, optionally with tag (resnet50.vkd)'
        )
        p.add_argument(
            '--no-ema', action='store_true', help='export the raw weights, not the EMA ones'
        )
        p.add_argument(
            '--allow-unsafe-pickle', action='store_true', help='trusted files only: may run code'
        )
        for key in ('teacher', 'kd-loss', 'recipe', 'dataset'):
            p.add_argument(
                f'--{key}', default=None, help=f'KD metadata: {key} (default: from the checkpoint)'
            )
        p.add_argument(
            '--license',
            default=None,
            help='license of the weights, as a Hub license id (default: none stated)',
        )
        p.add_argument(
            '--epochs',
            type=int,
            default=None,
            help='KD metadata: epochs (default: from the checkpoint)',
        )
        p.add_argument(
            '--top1',
            type=float,
            default=None,
            help="the card's top-1 (default: --results, else the checkpoint's best)",
        )
        p.add_argument(
            '--top5', type=float, default=None, help="the card's top-5 (default: --results)"
        )
        p.add_argument(
            '--results',
            default=None,
            help='JSON written by `python -m timm_kd.validate` (top1, top5)',
        )
        if command == 'export':
            p.add_argument('--out', required=True, help='output folder')
            p.add_argument(
                '--overwrite', action='store_true', help='replace an export already in --out'
            )
            p.add_argument(
                '--repo-id',
                default=None,
                help='ORG/NAME it will be pushed to: the card loads it from there (default: '
                'from --out, as local-dir:OUT)',
            )
        else:
            p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hugging Face Hub')
            p.add_argument('--private', action='store_true', help='create the repository private')
            p.add_argument(
                '--revision', default=None, help='branch to upload to (created if needed)'
            )
            p.add_argument(
                '--overwrite-card',
                action='store_true',
                help="replace the repo's README.md (kept by default, as timm's push_to_hf_hub "
                'does)',
            )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    overrides = dict(
        teacher=args.teacher,
        kd_loss=args.kd_loss,
        recipe=args.recipe,
        dataset=args.dataset,
        epochs=args.epochs,
        top1=args.top1,
        top5=args.top5,
        license=args.license,
    )
    if args.results:
        with open(args.results) as f:
            results = json.load(f)
        overrides.update(
            {k: results[k] for k in ('top1', 'top5') if overrides.get(k) is None and k in results}
        )
    common = dict(use_ema=not args.no_ema, allow_pickle=args.allow_unsafe_pickle, **overrides)
    with one_line_errors():
        if args.command == 'export':
            out = export(
                args.checkpoint, args.model, args.out, overwrite=args.overwrite,
                hub_id=args.repo_id, **common,
            )  # fmt: skip
            print(f'exported to {out}')
        else:
            url = push(
                args.checkpoint,
                args.model,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                overwrite_card=args.overwrite_card,
                **common,
            )
            print(f'pushed to {url}')
