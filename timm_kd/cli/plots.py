"""matplotlib for the programs that draw (diagnose, the experiments): an optional dependency."""

from ..errors import KDError


def pyplot():
    """matplotlib's pyplot on the Agg backend, or one line naming the extra that installs it."""
    try:
        import matplotlib
    except ImportError:
        raise KDError(
            'plots need matplotlib, which timm-kd installs as an extra: '
            "pip install 'timm-kd[plots]'"
        ) from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt
