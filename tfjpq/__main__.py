"""``python -m tfjpq``: the ``tfjpq`` command (see :mod:`tfjpq.cli`)."""

from tfjpq.cli import run

if __name__ == "__main__":
    run()
