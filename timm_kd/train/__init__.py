"""`python -m timm_kd.train` and `torchrun -m timm_kd.train`: the program is `timm_kd.cli.train`."""
