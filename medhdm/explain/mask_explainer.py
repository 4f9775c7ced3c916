"""The middle class of the optimised-mask methods (HDM, MDM, NeuroMask).

What sets them apart from the one-pass and sampling baselines is that they *train* masks:
each holds one or more :class:`~medhdm.explain.masks.MaskObjective` (loss weights,
optimiser steps, learning rate). :class:`MaskExplainer` owns those settings, so that a
caller (the CLI's ``--steps``, :func:`medhdm.explain.registry.make_explainer`, a
benchmark at several budgets) asks the method instead of knowing its attribute names.
"""

from __future__ import annotations

import dataclasses

from .base import Explainer
from .masks import MaskObjective

__all__ = ["MaskExplainer"]


class MaskExplainer(Explainer):
    """Base class of explainers that optimise masks.

    Subclasses name, in :attr:`objective_names`, the attributes that hold their
    :class:`~medhdm.explain.masks.MaskObjective` settings (one per optimisation phase).
    """

    #: the attributes holding this method's MaskObjective settings
    objective_names: tuple[str, ...] = ()

    @property
    def objectives(self) -> dict[str, MaskObjective]:
        """Each optimisation phase's settings, by attribute name."""
        return {name: getattr(self, name) for name in self.objective_names}

    def set_steps(self, steps: int) -> MaskExplainer:
        """Give every optimisation phase ``steps`` optimiser steps; returns ``self``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        for name, objective in self.objectives.items():
            setattr(self, name, dataclasses.replace(objective, steps=steps))
        return self
