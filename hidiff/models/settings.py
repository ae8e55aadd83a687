"""How a HiDiff turns an image into a mask by default: its refinement settings.

A trained model carries one :class:`RefineSettings` (``HiDiff.settings``): whether to refine at all, the sampler,
its number of steps, the ensemble size and the seed. :meth:`HiDiff.refine`, :meth:`HiDiff.segment`,
:func:`hidiff.evaluation.evaluate` and the ``hidiff`` commands default to it; explicit arguments win. The trainer
chooses it on the validation split at the end of training (:mod:`hidiff.selection`) and checkpoints store it, so
a reloaded model's plain ``model.segment(x)`` is the setting that did best on validation, or the segmentor's own
mask when no refinement setting beat the segmentor there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hidiff.diffusion import Sampler

__all__ = ["SETTINGS_SOURCES", "RefineSettings"]

#: Where a model's settings came from: the HiDiff constructor's defaults, a training configuration's
#: ``diffusion.*`` keys, a choice on a validation split, or the caller.
SETTINGS_SOURCES = ("default", "config", "validation", "user")


@dataclass
class RefineSettings:
    """Refinement settings of a HiDiff.

    Attributes:
        refine: True: the output is the refined map; False: the segmentor's prior (refinement off, e.g. because no
            sampler setting beat the segmentor on validation).
        steps: reverse steps (None: all T; DDIM respaced otherwise).
        samples: ensemble size (samples averaged per image).
        sampler: ``"ddim"`` or ``"ancestral"``.
        seed: sampling seed (same seed, same masks).
        frozen: True: the frozen refiner (packed weights, per-step tables) where the refiner is a BBDM in eval mode;
            False: the refiner layer by layer (same function up to float rounding, several times slower).
        source: where these settings came from, one of :data:`SETTINGS_SOURCES`.
        validation: for ``source == "validation"``: ``{"split", "num_images", "segmentor_dice", "dice", "table"}``,
            the Dice of the segmentor and of the chosen setting (fractions) and one row per setting tried.
    """

    refine: bool = True
    steps: int | None = None
    samples: int = 1
    sampler: str = "ddim"
    seed: int = 0
    frozen: bool = True
    source: str = "default"
    validation: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("refine", "frozen"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RefineSettings.{name} must be a bool, got {getattr(self, name)!r}")
        steps_valid = isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1
        if self.steps is not None and not steps_valid:
            raise ValueError(f"RefineSettings.steps must be None or an int >= 1, got {self.steps!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"RefineSettings.samples must be an int >= 1, got {self.samples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RefineSettings.seed must be an int >= 0, got {self.seed!r}")
        try:
            self.sampler = Sampler(str(self.sampler)).value
        except ValueError:
            raise ValueError(
                f"RefineSettings.sampler must be one of {', '.join(Sampler.choices())}, got {self.sampler!r}"
            ) from None
        if self.source not in SETTINGS_SOURCES:
            raise ValueError(f"RefineSettings.source must be one of {SETTINGS_SOURCES}, got {self.source!r}")

    @classmethod
    def from_config(cls, diffusion_config: Any) -> RefineSettings:
        """The settings a configuration's ``diffusion.sampler``, ``sample_steps`` and ``ensemble`` describe."""
        return cls(
            steps=diffusion_config.sample_steps,
            samples=diffusion_config.ensemble,
            sampler=str(diffusion_config.sampler),
            source="config",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any], what: str = "settings") -> RefineSettings:
        """Settings from :meth:`to_dict`'s form (a checkpoint entry).

        Raises:
            ValueError: `values` is not a dict, has unknown keys or invalid values; the message names `what`.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{what} must be a dict of refinement settings, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{what} has unknown keys {unknown}; expected some of {sorted(known)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{what}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (a checkpoint entry that ``torch.load(weights_only=True)`` reads)."""
        return asdict(self)

    def override(self, **values: Any) -> RefineSettings:
        """A copy with the given fields replaced. Changing only ``seed`` or ``frozen`` keeps the provenance (they
        do not change what was chosen); any other change makes the settings the caller's (``source="user"``)."""
        if not values:
            return self
        if values.keys() <= {"seed", "frozen"}:
            return replace(self, **values)
        return replace(self, **values, source="user", validation=None)

    @property
    def cost(self) -> int:
        """Refiner evaluations per image relative to one step of one sample (0 with refinement off); None steps
        count as 1000 so that any explicit count is cheaper."""
        if not self.refine:
            return 0
        return (self.steps if self.steps is not None else 1000) * self.samples

    def describe(self, num_steps: int | None = None) -> str:
        """One line for logs and reports, e.g. ``"DDIM, 1 step, mean of 16 samples, seed 0 (chosen on val: Dice
        88.70 vs segmentor 88.60)"``; `num_steps` (the diffusion's T) names the step count of ``steps=None``."""
        if self.refine:
            steps = self.steps if self.steps is not None else num_steps
            step_text = f"{steps} step{'s' if steps != 1 else ''}" if steps is not None else "all steps"
            plural = "s" if self.samples != 1 else ""
            what = f"{self.sampler.upper()}, {step_text}, mean of {self.samples} sample{plural}, seed {self.seed}"
        else:
            what = "refinement off (the segmentor's mask)"
        origin = {
            "default": "the model's defaults",
            "config": "from the training configuration",
            "user": "as given",
        }.get(self.source)
        if self.source == "validation" and self.validation:
            report = self.validation
            dice, segmentor = report.get("dice"), report.get("segmentor_dice")
            origin = f"chosen on {report.get('split', 'validation')}"
            if isinstance(dice, float) and isinstance(segmentor, float) and math.isfinite(segmentor):
                origin += f": Dice {100 * dice:.2f} vs segmentor {100 * segmentor:.2f}"
        return f"{what} ({origin})"
