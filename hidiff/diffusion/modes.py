"""The named choices of the diffusion process and its samplers, each defined and parsed in one place.

Every mode is a ``str`` enum: a member equals its string (``Sampler.DDIM == "ddim"``), so
configuration files and keyword arguments keep plain strings, and :meth:`Mode.parse` turns one into
a member once, at the boundary, with an error that names the argument and the choices.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FirstStepTerm", "Mode", "ModelPosterior", "Parameterization", "Sampler"]


class Mode(str, Enum):
    """Base of the modes: a choice among fixed strings."""

    @classmethod
    def parse(cls, value: object, argument: str) -> Mode:
        """The member whose string is ``value`` (a member is returned as it is).

        Raises:
            ValueError: ``value`` is none of the choices; the message names ``argument`` and them.
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{argument} must be one of {cls.choices()}, got {value!r}") from None

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The strings of the members, in definition order."""
        return tuple(member.value for member in cls)

    def __str__(self) -> str:
        return self.value


class Sampler(Mode):
    """The reverse process: deterministic-flip DDIM (Alg. 2) or ancestral sampling from Eq. 7's posterior."""

    DDIM = "ddim"
    ANCESTRAL = "ancestral"


class ModelPosterior(Mode):
    """How the model's ``p(y_{t-1} | y_t)`` is formed from ``y0_hat``: ``MIXTURE`` averages the exact
    posteriors of ``y0 = 1`` and ``y0 = 0`` with weight ``y0_hat`` (exact for a calibrated
    ``y0_hat = P(y0 = 1 | y_t)``); ``PLUGIN`` puts the continuous ``y0_hat`` into Eq. 7 (the paper's Eq. 10),
    which counts the evidence of ``y_t`` twice and pulls the prior-only chain toward 0.5."""

    MIXTURE = "mixture"
    PLUGIN = "plugin"


class FirstStepTerm(Mode):
    """The loss at t = 0: the decoder log-likelihood of ``y0`` under ``y0_hat`` (the public code) or
    under the model posterior (Eq. 7 at ``abar_{-1} = 1``)."""

    Y0_HAT = "y0_hat"
    POSTERIOR = "posterior"


class Parameterization(Mode):
    """The refiner's output: ``RESIDUAL`` corrects the prior-only Bayes denoiser in logit space;
    ``DIRECT`` is the paper's ``sigmoid(head)``."""

    RESIDUAL = "residual"
    DIRECT = "direct"
