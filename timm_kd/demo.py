"""`python -m timm_kd.demo`: the program is `timm_kd.cli.demo`."""

from .cli.demo import main

if __name__ == '__main__':
    main()
