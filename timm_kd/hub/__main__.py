"""`python -m timm_kd.hub ...`: the program is `timm_kd.cli.hub`."""

from ..cli.hub import main

main()
