"""``python -m medhdm.models``: re-create the shipped classifiers (see :mod:`medhdm.models.shipped`)."""

from .shipped import main

main()
