"""`python -m timm_kd.validate`: the program is `timm_kd.cli.validate`."""

from .cli.validate import main

if __name__ == '__main__':
    main()
