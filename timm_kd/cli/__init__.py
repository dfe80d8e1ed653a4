"""The programs: each parses its flags, translates
them once into typed values, and calls the library.

    timm-kd-train / python -m timm_kd.train      train (`train/`)
    python -m timm_kd.cache build                the teacher-output cache (`cache.py`)
    python -m timm_kd.validate                   accuracy, ReaL, teacher agreement
    python -m timm_kd.diagnose                   agreement, calibration, CKA, with figures
    python -m timm_kd.hub export|push            timm Hub folders and model cards
    python -m timm_kd.demo                       the Fashion-MNIST demo
    python -m timm_kd.recipes                    the bundled recipes
    python -m timm_kd.experiments ...            pitfall, unlabeled, topk

Nothing in the library imports from here (`tests/test_layers.py`).
"""
