"""`python -m timm_kd.experiments`: the programs are in `timm_kd.cli.experiments`."""
