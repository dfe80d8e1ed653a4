"""`python -m timm_kd.experiments ...`: the program is `timm_kd.cli.experiments`."""

from ..cli.experiments import main

main()
