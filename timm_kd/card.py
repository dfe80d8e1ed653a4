"""Model cards for distilled students, in the shape of
timm's published cards, with what distillation adds.

A card has: front matter (tags, `library_name: timm`, license only when known, datasets only when
named, and a `model-index` with the measured top-1/top-5 so the Hub shows them), a description of
how the model was distilled, details (type, params, GMACs, activations, train/test image size,
papers, teacher, loss, recipe, epochs, origin), three runnable snippets (classification printing the
top-5, feature maps, image embeddings), a results table, and citations of VanillaKD (Hao et al.,
2023), timm, and the student's and teacher's papers.
"""

import re
from typing import Any, Dict, List, Optional

import torch
import yaml

VANILLAKD = (
    'VanillaKD: Revisit the Power of Vanilla Knowledge Distillation from Small Scale to Large '
    'Scale',
    'https://arxiv.org/abs/2305.15781',
    """@article{hao2023vanillakd,
  title={VanillaKD: Revisit the Power of Vanilla Knowledge Distillation
         from Small Scale to Large Scale},
  author={Hao, Zhiwei and Guo, Jianyuan and Han, Kai and Hu, Han and Xu, Chang and Wang, Yunhe},
  journal={arXiv preprint arXiv:2305.15781},
  year={2023}
}""",
)
TIMM = """@misc{rw2019timm,
  author={Ross Wightman},
  title={PyTorch Image Models},
  year={2019},
  publisher={GitHub},
  journal={GitHub repository},
  doi={10.5281/zenodo.4414861},
  howpublished={\\url{https://github.com/huggingface/pytorch-image-models}}
}"""
# Architecture families (the name up to the first digit
# or `_`, keeping a `v2`) -> (paper title, url, bibtex)
PAPERS = {
    'resnet': (
        'Deep Residual Learning for Image Recognition',
        'https://arxiv.org/abs/1512.03385',
        """@inproceedings{he2016deep,
  title={Deep Residual Learning for Image Recognition},
  author={He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle={CVPR},
  year={2016}
}""",
    ),
    'vit': (
        'An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale',
        'https://arxiv.org/abs/2010.11929',
        """@inproceedings{dosovitskiy2021vit,
  title={An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author={Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk
    and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias
    and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},
  booktitle={ICLR},
  year={2021}
}""",
    ),
    'convnextv2': (
        'ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders',
        'https://arxiv.org/abs/2301.00808',
        """@inproceedings{woo2023convnextv2,
  title={ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders},
  author={Woo, Sanghyun and Debnath, Shoubhik and Hu, Ronghang and Chen, Xinlei and Liu, Zhuang
    and Kweon, In So and Xie, Saining},
  booktitle={CVPR},
  year={2023}
}""",
    ),
    'beitv2': (
        'BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers',
        'https://arxiv.org/abs/2208.06366',
        """@article{peng2022beitv2,
  title={BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers},
  author={Peng, Zhiliang and Dong, Li and Bao, Hangbo and Ye, Qixiang and Wei, Furu},
  journal={arXiv preprint arXiv:2208.06366},
  year={2022}
}""",
    ),
}
EXAMPLE_IMAGE = 'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
# Outputs counted as activations: those of convolutions,
# matrix products and attention (fvcore's definition).
_ACTIVATION_OPS = ('convolution', 'mm', 'addmm', 'bmm', 'baddbmm', '_scaled_dot_product')


def _paper(model_name: Optional[str]):
    """The paper of a timm name's family: the letters before the first digit or `_`, with a
    version suffix kept (`beitv2_base_patch16_224...` -> beitv2, `resnet50` -> resnet)."""
    match = re.match(r'([a-z]+?(?:v\d+)?)(?=[\d_.]|$)', model_name or '')
    return PAPERS.get(match.group(1)) if match else None


def model_stats(model: torch.nn.Module, input_size) -> Dict[str, float]:
    """Params (M), GMACs and activations (M) of one image
    at `input_size`, counted in one forward pass."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Activations(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__.startswith(_ACTIVATION_OPS):
                Activations.count += (out[0] if isinstance(out, (tuple, list)) else out).numel()
            return out

    with torch.no_grad(), FlopCounterMode(display=False) as flops, Activations():
        model.eval()(torch.zeros(1, *input_size))
    return {
        'params': sum(p.numel() for p in model.parameters()) / 1e6,
        'gmacs': flops.get_total_flops() / 2e9,
        'activations': Activations.count / 1e6,
    }


def dataset_id(name: Optional[str]) -> Optional[str]:
    """A Hub-style dataset id from a timm dataset spec or a name: 'torch/cifar100' -> 'cifar100'."""
    if not name:
        return None
    return re.sub(r'^(torch|tfds|wds|hfds|hfids)/', '', name).lower()


def _front_matter(name: str, meta: Dict[str, Any]) -> str:
    tags = ['image-classification', 'timm'] + (
        ['knowledge-distillation'] if meta.get('teacher') else []
    )
    front: Dict[str, Any] = {
        'tags': tags,
        'library_name': 'timm',
        'pipeline_tag': 'image-classification',
    }
    if meta.get('license'):
        front['license'] = meta['license']
    dataset = dataset_id(meta.get('dataset'))
    if dataset:
        front['datasets'] = [dataset]
        metrics = [
            {'type': 'accuracy', 'name': f'Top-{k} accuracy', 'value': meta[f'top{k}']}
            for k in (1, 5)
            if meta.get(f'top{k}') is not None
        ]
        if metrics:
            front['model-index'] = [
                {
                    'name': name,
                    'results': [
                        {
                            'task': {
                                'type': 'image-classification',
                                'name': 'Image Classification',
                            },
                            'dataset': {'type': dataset, 'name': meta['dataset']},
                            'metrics': metrics,
                        }
                    ],
                }
            ]
    return '---\n' + yaml.safe_dump(front, sort_keys=False) + '---\n'


def _usage(model_id: str, features: bool) -> str:
    load = f"model = timm.create_model('{model_id}', pretrained=True{{extra}}).eval()\n"
    preamble = (
        '```python\nfrom urllib.request import urlopen\n\nimport timm\nimport torch\nfrom PIL '
        f"import Image\n\nimage = Image.open(urlopen('{EXAMPLE_IMAGE}')).convert('RGB')\n"
    )
    transform = (
        'config = timm.data.resolve_data_config({}, model=model, use_test_size=True)\n'
        'batch = timm.data.create_transform(**config)(image).unsqueeze(0)  # a batch of one image\n'
    )
    text = (
        '### Image Classification\n'
        + preamble
        + load.format(extra='')
        + transform
        + 'with torch.no_grad():\n    probabilities = model(batch).softmax(dim=-1)[0]\n'
        'for p, index in zip(*probabilities.topk(min(5, len(probabilities)))):\n'
        '    print(f"class {index.item():4d}: {100 * p.item():.2f}%")\n```\n'
    )
    if features:
        text += (
            '\n### Feature Map Extraction\n'
            + preamble
            + load.format(extra=', features_only=True')
            + transform
            + 'with torch.no_grad():\n    for feature_map in model(batch):\n'
            '        print(feature_map.shape)  # one map per stage, finest first\n```\n'
        )
    text += (
        '\n### Image Embeddings\n'
        + preamble
        + load.format(extra=', num_classes=0')
        + transform
        + 'with torch.no_grad():\n    embedding = model(batch)  # pooled features, the classifier '
        'removed\nprint(embedding.shape)  # (1, num_features)\n\n'
        '# or, keeping the classifier: the unpooled features, then the head without its last '
        'layer\n'
        + load.format(extra='')
        + 'with torch.no_grad():\n    features = model.forward_features(batch)\n'
        '    embedding = model.forward_head(features, pre_logits=True)\n```\n'
    )
    return text


def _loss_lines(meta: Dict[str, Any]) -> Optional[List[str]]:
    """Each distillation loss with its weight and hyperparameters, and the hard-label weight."""
    weights = meta.get('kd_loss_weights')
    if not weights:
        return None
    settings = meta.get('kd_loss_hyperparameters') or {}
    lines = [
        f'{name}: weight {weight:g}'
        + ''.join(f', {k} {v}' for k, v in sorted(settings.get(name, {}).items()))
        for name, weight in weights.items()
    ]
    return lines + [f'hard-label loss: weight {meta.get("hard_label_loss_weight", 1.0):g}']


def model_card(
    name: str,
    model: torch.nn.Module,
    meta: Dict[str, Any],
    pretrained_cfg: Dict[str, Any],
    model_id: str,
) -> str:
    """The README.md of a distilled model called `name`, loaded in its snippets as `model_id`."""
    input_size = tuple(pretrained_cfg['input_size'])
    test_size = tuple(pretrained_cfg.get('test_input_size') or input_size)
    stats = model_stats(model, input_size)
    arch = pretrained_cfg.get('architecture') or name.split('.')[0]
    teacher = meta.get('teacher')
    papers: List[tuple] = []
    for paper in (VANILLAKD if teacher else None, _paper(arch), _paper(teacher)):
        if paper and paper not in papers:
            papers.append(paper)
    sizes = f'train = {input_size[1]} x {input_size[2]}, test = {test_size[1]} x {test_size[2]}'
    details = [
        ('Model Type', 'Image classification / feature backbone'),
        (
            'Model Stats',
            [
                f'Params (M): {stats["params"]:.1f}',
                f'GMACs: {stats["gmacs"]:.2f}',
                f'Activations (M): {stats["activations"]:.1f}',
                f'Image size: {sizes}',
            ],
        ),
        ('Papers', [f'{title}: {url}' for title, url, _ in papers]),
        ('Dataset', meta.get('dataset')),
        ('Teacher', f'`{teacher}`' if teacher else None),
        ('Distillation loss', _loss_lines(meta) or meta.get('kd_loss')),
        ('Recipe', meta.get('recipe')),
        ('Training', meta.get('training')),
        ('Epochs', meta.get('epochs')),
        ('Original', meta.get('origin_url')),
        (
            'License',
            meta.get('license')
            or (
                'not stated by the authors of the weights'
                if meta.get('origin_url')
                else 'not stated (pass --license ID to python -m timm_kd.hub export)'
            ),
        ),
    ]
    text = _front_matter(name, meta) + f'# Model card for {name}\n\n'
    on = f' on {meta["dataset"]}' if meta.get('dataset') else ''
    if teacher:
        text += (
            f'A {type(model).__name__} image classifier distilled from `{teacher}` by knowledge '
            f'distillation ({meta.get("kd_loss", "kd")} loss){on} (VanillaKD, Hao et al., 2023), '
        )
    else:
        text += f'A {type(model).__name__} image classifier trained without a teacher{on}, '
    text += 'exported with timm-kd. It loads in plain timm; no timm-kd is needed to use it.\n'
    text += '\n## Model Details\n'
    for key, value in details:
        if isinstance(value, list):
            text += f'- **{key}:**\n' + ''.join(f'  - {v}\n' for v in value)
        elif value is not None:
            text += f'- **{key}:** {value}\n'
    text += '\n## Model Usage\n' + _usage(
        model_id, features=bool(getattr(model, 'feature_info', None))
    )
    text += (
        '\n## Model Comparison\n| model | teacher | loss | recipe | epochs | top-1 | top-5 | '
        'params (M) | GMACs | image size |\n|---|---|---|---|---|---|---|---|---|---|\n'
        f'| {name} | {teacher or "-"} | {meta.get("kd_loss", "-")} | {meta.get("recipe", "-")} | '
        f'{meta.get("epochs", "-")} | {meta.get("top1", "-")} | {meta.get("top5", "-")} | '
        f'{stats["params"]:.1f} | {stats["gmacs"]:.2f} | {test_size[1]} |\n'
    )
    cited = (
        ([VANILLAKD[2]] if teacher else []) + [TIMM] + [p[2] for p in papers if p is not VANILLAKD]
    )
    text += '\n## Citation\n' + ''.join(f'```bibtex\n{bib}\n```\n' for bib in cited)
    return text
