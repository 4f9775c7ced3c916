"""Synthetic annotated cases on real anatomy (see :mod:`medhdm.data.lesions`)."""

from .lesions import LesionCase, anatomy, make_case, make_dataset, stack_cases

__all__ = ["LesionCase", "anatomy", "make_case", "make_dataset", "stack_cases"]
