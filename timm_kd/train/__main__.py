"""`python -m timm_kd.train` and `torchrun -m timm_kd.train`."""

from .loop import cli

cli()
