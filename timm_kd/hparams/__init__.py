"""The bundled training recipes: the YAML files beside this module, installed with the package.

Each reproduces a table of VanillaKD (Hao et al., 2023); `python -m timm_kd.recipes` lists them and
`timm-kd-train --config NAME` uses one.
"""

import os
import re
from typing import Dict, Optional

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))


def list_recipes() -> Dict[str, str]:
    """Recipe name -> the first sentence of its header comment, sorted by name."""
    out = {}
    for file in sorted(os.listdir(RECIPE_DIR)):
        if file.endswith('.yaml'):
            with open(os.path.join(RECIPE_DIR, file)) as f:
                header = []
                for line in f:
                    if not line.startswith('#'):
                        break
                    header.append(line.lstrip('# ').strip())
            text = ' '.join(header)
            first = re.match(r'(.+?[.!?])(\s|$)', text)
            out[file[: -len('.yaml')]] = first.group(1) if first else text
    return out


def find_recipe(name: str) -> Optional[str]:
    """Path of the bundled recipe `name` (with or without .yaml), or None."""
    path = os.path.join(RECIPE_DIR, os.path.basename(name))
    for candidate in (path, path + '.yaml'):
        if os.path.isfile(candidate):
            return candidate
    return None
