#!/usr/bin/env python3
"""Launcher kept for checkouts: `python train_kd.py ...`
= `timm-kd-train ...` = `python -m timm_kd.train ...`.

The training program is `timm_kd.cli.train`; see its docstring, or `--help`.
"""

from timm_kd.cli.train import cli, main  # noqa: F401  (main: in-process use, e.g. tests)

if __name__ == '__main__':
    cli()
