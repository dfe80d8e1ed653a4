"""`python -m timm_kd.recipes`: the program is `timm_kd.cli.recipes`."""

from .cli.recipes import main

if __name__ == '__main__':
    main()
