"""What every benchmark's plot shares (not a benchmark: run.py skips names starting with _): matplotlib
without a display, or None where it is not installed; and the figure titled, laid out and saved."""


def pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot')
        return None
    return plt


def save(fig, path, title=None, dpi=110, **layout):
    if title:
        fig.suptitle(title)
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=dpi)
    return True
