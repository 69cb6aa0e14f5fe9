"""``python -m mechintro.transcoders train-organism``: see :mod:`mechintro.transcoders.train`."""

from mechintro.transcoders.train import main

main()
