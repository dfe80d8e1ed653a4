"""The bundled training recipes (`timm_kd/hparams/*.yaml`, installed with the package).

    python -m timm_kd.recipes            # list them, with the first line of each
    timm-kd-train DATA --config resnet50_a2 --teacher ...   # use one by name

Each file reproduces a table of VanillaKD (Hao et al., 2023); its header names the table and the
global batch it was written for. A checkout also has them at `hparams/` (a link to this folder).
"""

import argparse

from ..hparams import RECIPE_DIR, list_recipes


def main(argv=None) -> None:
    argparse.ArgumentParser(
        prog='python -m timm_kd.recipes',
        description='List the bundled recipes (use one with --config NAME).',
    ).parse_args(argv)
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, title in recipes.items():
        print(f'{name:<{width}}  {title}')
    print(
        f'\n{len(recipes)} recipes in {RECIPE_DIR}; use one with: timm-kd-train DATA --config NAME'
    )
