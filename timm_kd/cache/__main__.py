"""`python -m timm_kd.cache build ...`: the program is `timm_kd.cli.cache`."""

from ..cli.cache import main

main()
