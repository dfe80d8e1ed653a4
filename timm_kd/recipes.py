"""The bundled training recipes (`timm_kd/hparams/*.yaml`, installed with the package).

    python -m timm_kd.recipes            # list them, with the first line of each
    timm-kd-train DATA --config resnet50_a2 --teacher ...   # use one by name

Each file reproduces a table of VanillaKD (Hao et al., 2023); its header names the table and the
global batch it was written for. A checkout also has them at `hparams/` (a link to this folder).
"""

import argparse
import os
from typing import Dict, Optional

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'hparams')


def list_recipes() -> Dict[str, str]:
    """Recipe name -> the first line of its header comment, sorted by name."""
    out = {}
    for file in sorted(os.listdir(RECIPE_DIR)):
        if file.endswith('.yaml'):
            with open(os.path.join(RECIPE_DIR, file)) as f:
                out[file[: -len('.yaml')]] = f.readline().lstrip('# ').strip()
    return out


def find_recipe(name: str) -> Optional[str]:
    """Path of the bundled recipe `name` (with or without .yaml), or None."""
    path = os.path.join(RECIPE_DIR, os.path.basename(name))
    for candidate in (path, path + '.yaml'):
        if os.path.isfile(candidate):
            return candidate
    return None


def main(argv=None) -> None:
    argparse.ArgumentParser(
        description='List the bundled recipes (use one with --config NAME).'
    ).parse_args(argv)
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, title in recipes.items():
        print(f'{name:<{width}}  {title}')
    print(
        f'\n{len(recipes)} recipes in {RECIPE_DIR}; use one with: timm-kd-train DATA --config NAME'
    )


if __name__ == '__main__':
    main()
