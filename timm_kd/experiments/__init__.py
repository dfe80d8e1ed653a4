"""Experiments on data and hardware you have, each a resumable grid of `timm_kd.train` runs.

    python -m timm_kd.experiments pitfall     the small-data pitfall (VanillaKD Fig. 1 / Table 13)
    python -m timm_kd.experiments unlabeled   distillation from unlabeled images
    python -m timm_kd.experiments topk        a student's top-1 against the teacher cache's K, on 100 classes

Each command's --help says what it runs and writes.
"""
