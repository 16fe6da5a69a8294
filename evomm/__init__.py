"""evomm: evolve model-merge recipes for LLMs, VLMs and SDXL."""

__version__ = "0.1.0"


def run(cfg):
    """Run one evolutionary merge from a composed config (see ``evomm.runner.run``)."""
    from evomm.runner import run as _run

    return _run(cfg)
