"""Synthetic annotated cases on real anatomy (see :mod:`medhdm.data.lesions`)."""

from .lesions import LesionCase, anatomy, make_case, make_cue_case, make_cue_dataset, make_dataset, stack_cases

__all__ = ["LesionCase", "anatomy", "make_case", "make_cue_case", "make_cue_dataset", "make_dataset", "stack_cases"]
