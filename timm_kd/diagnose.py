"""`python -m timm_kd.diagnose`: the program is `timm_kd.cli.diagnose`."""

from .cli.diagnose import main

if __name__ == '__main__':
    main()
