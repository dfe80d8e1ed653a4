"""Distilled students as timm Hugging Face Hub folders: `load_student` reads a checkpoint into its
timm model, `export` writes the folder (`model.safetensors`, `config.json` with the KD metadata
under "kd" and the data's class names, a `README.md` model card from `timm_kd.card`), `push`
publishes it. The checkpoint may be a timm-kd training checkpoint (its EMA weights when present), a
bare state_dict, a .safetensors file or a VanillaKD release file (FAIR's ConvNeXt-V2 keys are
converted by timm's own filter); loading never runs pickled code. Only the student is exported:
KD projectors, embeddings and auxiliary heads never reach the weights. The command line is
`python -m timm_kd.hub` (`timm_kd.cli.hub`).
"""

import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

import torch
from timm.data import resolve_data_config
from timm.models import create_model, get_pretrained_cfg, is_model, split_model_name_tag
from timm.models._hub import save_for_hf

from ..card import model_card
from ..checkpoint import (
    checkpoint_num_classes,
    load_state_dict,
    load_training_metadata,
    model_keywords,
)
from ..errors import KDError, flat, hub_problem
from ..losses.config import kd_loss_config, loss_hyperparameters
from ..run import recorded_student
from ..saver import non_finite_tensors


def load_student(
    checkpoint: str,
    model_name: Optional[str] = None,
    use_ema: bool = True,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """The timm model of `checkpoint`, keys converted by timm's filter if needed: the architecture
    `model_name`, or the one the checkpoint records (`--model`).

    A training checkpoint's typed record (`timm_kd.run.run_record`) builds the model as training
    built it (`ModelSpec.keywords`: the input channels, drop rates, `--gp`, BatchNorm overrides,
    `--model-kwargs`) and sets its preprocessing: the model's pretrained cfg gets the data config
    it was trained and validated with (input size, crop, interpolation, mean/std), at train and
    test size alike, so `validate` and `export` score and publish it as trained. A checkpoint of
    an earlier version without the typed record is read from timm's recorded `args` alike.
    """
    metadata = load_training_metadata(checkpoint)
    args = metadata.get('args') or {}
    try:
        typed = recorded_student(metadata.get('saver'))
    except ValueError as e:  # a record of a later version
        raise KDError(f'{checkpoint!r}: {e}; load it with the timm-kd that wrote it') from None
    model_name = model_name or (typed[1].model if typed else args.get('model'))
    if not model_name:
        raise KDError(
            f'{checkpoint!r} records no --model (not a training checkpoint); pass the timm '
            'architecture it holds'
        )
    if not is_model(split_model_name_tag(model_name)[0]) and not model_name.startswith('hf-hub:'):
        raise KDError(
            f'unknown --model {model_name!r}; pass the timm architecture the checkpoint was '
            'trained with (python -c "import timm; print(timm.list_models())")'
        )
    state_dict = load_state_dict(checkpoint, use_ema=use_ema, allow_pickle=allow_pickle)
    kwargs = typed[1].keywords if typed and typed[1].create.keywords else model_keywords(args)
    model = create_model(model_name, pretrained=False, **kwargs)
    if set(state_dict) != set(model.state_dict()):
        filter_fn = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, model)
            except Exception:  # the filter does not know this layout: report the key mismatch below
                pass
    num_classes = checkpoint_num_classes(split_model_name_tag(model_name)[0], state_dict)
    if num_classes is not None and num_classes != model.num_classes:
        model = create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = flat(e, 200)
        raise KDError(
            f'checkpoint {checkpoint!r} does not fit {model_name!r} ({first}); pass the '
            f'architecture it was trained with as --model'
        ) from None
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise KDError(
            f'checkpoint {checkpoint!r} holds non-finite weights ({bad[0]} and {len(bad) - 1} '
            f'more): the run diverged; use an earlier checkpoint of it'
        )
    if typed and typed[0].data_config:  # the data config it trained and validated with
        config = typed[0].student_data_config
    elif args:  # an earlier checkpoint: resolved from its flags as training resolved it
        config = resolve_data_config(args, model=model)
    else:
        config = None
    if config:
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            **config,
            'test_input_size': config['input_size'],
            'test_crop_pct': config['crop_pct'],
        }
    return model.eval()


def kd_metadata(
    model_name: str, training: Dict[str, Any], overrides: Dict[str, Any]
) -> Dict[str, Any]:
    """What the card and config record of how the model was trained: from the model's `vkd`-style
    cfg, the training checkpoint's args and metric (`training`, as `load_training_metadata` returns
    them), then explicit overrides (later wins). With a teacher: its name (a local checkpoint is
    named by the architecture it was loaded into, never by its path), each loss with its weight
    and every hyperparameter it trained with, the hard-label weight, the recipe and epochs."""
    cfg = get_pretrained_cfg(model_name, allow_unregistered=True)
    meta: Dict[str, Any] = dict(getattr(cfg, 'kd', None) or {})
    if getattr(cfg, 'origin_url', None):
        meta['origin_url'] = cfg.origin_url
    args = training.get('args') or {}
    teachers = [t['name'] for t in args.get('teachers') or []] or (
        [args['teacher']] if args.get('teacher') else []
    )
    if teachers:
        losses = args.get('kd_loss') or ['kd']
        losses = [losses] if isinstance(losses, str) else list(losses)
        weights, kwargs = kd_loss_config(
            losses,
            list(args.get('kd_loss_weight') or [1.0]),
            temperature=args.get('kd_temperature'),
            loss_kwargs=args.get('kd_loss_kwargs'),
            flags=args,
        )
        # a folder's name is no dataset name: --dataset names it
        meta.update(
            teacher=', '.join(_teacher_name(t) for t in teachers),
            kd_loss=', '.join(losses),
            kd_loss_weights=weights,
            kd_loss_hyperparameters={
                n: {**loss_hyperparameters(n), **kw} for n, kw in kwargs.items()
            },
            hard_label_loss_weight=args.get('ori_loss_weight', 1.0),
            epochs=args.get('epochs'),
            recipe=os.path.basename(args['config']) if args.get('config') else None,
            dataset=args.get('dataset') or None,
        )
    elif args:  # trained by timm-kd without a teacher: plain supervised training
        meta.update(
            teacher=None,
            kd_loss=None,
            epochs=args.get('epochs'),
            recipe=os.path.basename(args['config']) if args.get('config') else None,
            dataset=args.get('dataset') or None,
        )
    if args:
        meta['training'] = _recipe_details(args)
    if training.get('metric') is not None and args.get('eval_metric', 'top1') == 'top1':
        meta.setdefault('top1', round(float(training['metric']), 3))
    meta.update({k: v for k, v in overrides.items() if v is not None})
    return {k: v for k, v in meta.items() if v is not None}


def _recipe_details(recorded: Dict[str, Any]) -> List[str]:
    """The training settings a reader of the card needs to retrain it, as timm's cards list them,
    from the flags a checkpoint `recorded`."""
    lr = f'lr {recorded["lr"]:g}' if recorded.get('lr') else (
        f'lr {recorded.get("lr_base", 0.1):g} at a global batch of '
        f'{recorded.get("lr_base_size", 256)}, scaled to the batch trained with'
    )  # fmt: skip
    size = recorded.get('input_size') or (
        [recorded['img_size']] * 2 if recorded.get('img_size') else None
    )
    details = [
        f'optimizer {recorded.get("opt")}, {lr}, weight decay {recorded.get("weight_decay")}',
        f'schedule {recorded.get("sched")}, {recorded.get("epochs")} epochs, '
        f'{recorded.get("warmup_epochs")} warm-up',
        f'batch size {recorded.get("batch_size")} per process'
        + (f', image size {size[-1]}' if size else ''),
    ]
    augment = [
        f'{key} {recorded[key]}'
        for key in ('aa', 'mixup', 'cutmix', 'reprob', 'smoothing', 'drop_path')
        if recorded.get(key)
    ]
    if augment:
        details.append('augmentation and regularization: ' + ', '.join(augment))
    if recorded.get('bce_loss'):
        details.append('hard-label loss: binary cross-entropy')
    return details


def _teacher_name(name: str) -> str:
    """A teacher as a reader can look it up: `local-dir:/a/b/convnext` -> `convnext`."""
    if name.startswith('local-dir:'):
        return os.path.basename(os.path.normpath(name[len('local-dir:') :]))
    return name


def export(
    checkpoint: str,
    model_name: str,
    out: str,
    use_ema: bool = True,
    allow_pickle: bool = False,
    hub_id: Optional[str] = None,
    overwrite: bool = False,
    **overrides: Any,
) -> str:
    """Write `model.safetensors`, `config.json` and `README.md` for `checkpoint` into `out`; returns
    `out`. A folder that already holds an export is refused unless `overwrite`."""
    _check_out(out, overwrite)
    model = load_student(checkpoint, model_name, use_ema=use_ema, allow_pickle=allow_pickle)
    training = load_training_metadata(checkpoint)
    meta = kd_metadata(model_name, training, overrides)
    model_config: Dict[str, Any] = {'kd': meta}
    label_names = (training.get('saver') or {}).get('label_names')
    if label_names and len(label_names) == model.num_classes:
        model_config['label_names'] = list(label_names)
    # as trained
    data_config = resolve_data_config({}, model=model) if training.get('args') else None
    save_for_hf(
        model, out, model_config=model_config, safe_serialization=True, data_config=data_config
    )
    config_path = os.path.join(out, 'config.json')
    with open(config_path) as f:
        config = json.load(f)
    # The architecture's default cfg lends its tag ('r160_in1k')
    # and license; neither describes these weights.
    arch, tag = split_model_name_tag(model_name)
    resolved = config['pretrained_cfg']
    resolved.update(tag=tag or 'kd', architecture=arch)
    resolved.pop('license', None)
    if meta.get('license'):
        resolved['license'] = meta['license']
    with open(config_path, 'w') as f:
        json.dump(config, f, indent=2)
    name = hub_id.split('/')[-1] if hub_id else model_name
    # where it loads from as written
    model_id = f'hf-hub:{hub_id}' if hub_id else f'local-dir:{out}'
    with open(os.path.join(out, 'README.md'), 'w', encoding='utf-8') as f:
        f.write(model_card(name, model, meta, resolved, model_id))
    for file in os.listdir(out):  # readable by others, as any published file (the writer used 0600)
        os.chmod(os.path.join(out, file), 0o644)
    return out


def _check_out(out: str, overwrite: bool) -> None:
    parent = os.path.abspath(out)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise KDError(f'--out {out!r}: {parent!r} is a file; pass a folder')
    held = [
        n
        for n in ('config.json', 'model.safetensors', 'README.md')
        if os.path.exists(os.path.join(out, n))
    ]
    if held and not overwrite:
        raise KDError(
            f'--out {out!r} already holds {", ".join(held)}; pass --overwrite to replace them, or '
            'another --out'
        )


def push(
    checkpoint: str,
    model_name: str,
    repo_id: str,
    private: bool = False,
    revision: Optional[str] = None,
    overwrite_card: bool = False,
    commit_message: str = 'Add distilled model (timm-kd)',
    **export_kwargs: Any,
) -> str:
    """Export, then publish as timm's `push_to_hf_hub` does: the repo is created if needed and
    tagged as a timm library model, and a README.md already in the repo is kept unless
    `overwrite_card`. The token comes from huggingface_hub's usual places (HF_TOKEN,
    `hf auth login`); it is never printed or written to the folder."""
    import huggingface_hub
    import timm

    try:
        api = huggingface_hub.HfApi(library_name='timm', library_version=timm.__version__)
        with tempfile.TemporaryDirectory() as tmp:
            export(checkpoint, model_name, tmp, hub_id=repo_id, **export_kwargs)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            if not overwrite_card and api.file_exists(repo_id, 'README.md', revision=revision):
                os.remove(os.path.join(tmp, 'README.md'))
            api.upload_folder(
                repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message
            )
    except KDError:
        raise
    except Exception as e:  # huggingface_hub: offline mode, 401/403, network errors
        raise KDError(
            f'cannot push to the Hugging Face Hub repo {repo_id} ({hub_problem(e)})'
        ) from None
    return f'https://huggingface.co/{repo_id}'
