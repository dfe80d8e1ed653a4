"""`python -m timm_kd.train`: the program is `timm_kd.cli.train`."""

from ..cli.train import cli

cli()
