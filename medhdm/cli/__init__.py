"""The ``medhdm`` command line: :func:`main` and :func:`build_parser` (:mod:`~medhdm.cli.main`), the option groups
that commands share (:mod:`~medhdm.cli.options`), and one module per command group: :mod:`~medhdm.cli.demo`,
:mod:`~medhdm.cli.explain`, :mod:`~medhdm.cli.evaluate`, :mod:`~medhdm.cli.bench_data`,
:mod:`~medhdm.cli.export`, :mod:`~medhdm.cli.pacs` (``pacs explain``, ``pacs serve``).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
