"""HiDiff: a discriminative segmentor whose prior is refined by a Bernoulli diffusion refiner."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .bbdm import BBDM
from .frozen import FrozenBBDM, freeze
from .segmentors import prior_from_logits
from .settings import RefineSettings

if TYPE_CHECKING:
    from hidiff.diffusion import BernoulliDiffusion, DiffusionLoss


class _Stored:
    """Type of :data:`STORED`."""

    _instance: _Stored | None = None

    def __new__(cls) -> _Stored:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "STORED"


#: Default of the sampling arguments of :meth:`HiDiff.refine`: "the model's stored setting" (``steps=None`` already
#: means all T, so None cannot say it).
STORED: Any = _Stored()
#: The sampling arguments that :meth:`HiDiff.refine` takes and :attr:`HiDiff.settings` stores.
SAMPLING_ARGUMENTS = frozenset({"steps", "samples", "sampler", "seed", "frozen"})


#: Elements per tensor that the frozen refiner's fingerprint reads (all of smaller tensors).
FINGERPRINT_SAMPLES = 1024


def _sampled_elements(tensor: Tensor) -> Tensor:
    """Up to :data:`FINGERPRINT_SAMPLES` evenly spaced elements of `tensor`: a view sharing its storage when it is
    contiguous (later writes show through), else the tensor itself (flattened, read whole, at each use)."""
    detached = tensor.detach()
    if not detached.is_contiguous():
        return detached
    flat = detached.view(-1)
    return flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)]


_PLAIN_TYPES = frozenset({bool, int, float, str, type(None)})


def _is_plain(value: object) -> bool:
    """A bool, number, string or None, or a tuple of them (what a module's setting attributes hold)."""
    if type(value) is tuple:
        return all(_is_plain(item) for item in value)
    return type(value) in _PLAIN_TYPES


def _plain_settings(module: nn.Module) -> tuple:
    """A module's type, training flag and public plain-valued attributes (in the order they were set)."""
    return (type(module), *((k, v) for k, v in vars(module).items() if k[0] != "_" and _is_plain(v)))


class HiDiff(nn.Module):
    """Segmentor + refiner (+ the diffusion process, a plain object, not a submodule).

    Args:
        segmentor: ``forward(x) -> (logits (B, K, H, W), 4 features at H/4..H/32)`` with the
            attributes ``feature_channels``, ``num_classes`` and ``in_channels``.
        refiner: :class:`~hidiff.models.BBDM` (or any module with the same call and attributes
            ``cond_channels``, ``num_classes``, ``image_channels``).
        diffusion: :class:`~hidiff.diffusion.BernoulliDiffusion` (needs ``training_loss``,
            ``sample`` and ``to_mask``).

    Raises:
        ValueError: the refiner's feature channels, class count or image channels differ from the
            segmentor's.
        TypeError: ``diffusion`` lacks one of the methods above.
    """

    def __init__(self, segmentor: nn.Module, refiner: nn.Module, diffusion: BernoulliDiffusion) -> None:
        super().__init__()
        for name in ("feature_channels", "num_classes", "in_channels"):
            if not hasattr(segmentor, name):
                raise TypeError(f"segmentor must have the attribute {name!r} ({type(segmentor).__name__} has not)")
        for name in ("cond_channels", "num_classes", "image_channels"):
            if not hasattr(refiner, name):
                raise TypeError(f"refiner must have the attribute {name!r} ({type(refiner).__name__} has not)")
        for name in ("training_loss", "sample", "to_mask"):
            if not callable(getattr(diffusion, name, None)):
                raise TypeError(f"diffusion must have a {name}() method ({type(diffusion).__name__} has not)")
        if tuple(refiner.cond_channels) != tuple(segmentor.feature_channels):
            raise ValueError(
                f"refiner.cond_channels {tuple(refiner.cond_channels)} must equal segmentor.feature_channels "
                f"{tuple(segmentor.feature_channels)}"
            )
        if refiner.num_classes != segmentor.num_classes:
            raise ValueError(
                f"refiner.num_classes ({refiner.num_classes}) must equal "
                f"segmentor.num_classes ({segmentor.num_classes})"
            )
        if refiner.image_channels != segmentor.in_channels:
            raise ValueError(
                f"refiner.image_channels ({refiner.image_channels}) must equal segmentor.in_channels "
                f"({segmentor.in_channels})"
            )
        self.segmentor = segmentor
        self.refiner = refiner
        self.diffusion = diffusion
        # Frozen refiners by visited timesteps, and the refiner state they were frozen from: a plain
        # attribute, not a submodule (no state_dict entries; moved by refreezing).
        self._frozen_cache: dict[tuple[int, ...], FrozenBBDM] = {}
        self._frozen_from: tuple | None = None
        # Views of a few elements of each refiner tensor (the fingerprint's contents), per storage layout.
        self._sample_layout: tuple | None = None
        self._sample_views: list[Tensor] = []
        self.settings = RefineSettings()

    @property
    def settings(self) -> RefineSettings:
        """The refinement settings that :meth:`refine`, :meth:`segment` and evaluation use by default.

        A model built from a configuration (:func:`hidiff.factory.build_model`) starts with the configuration's;
        training replaces them with the setting chosen on the validation split, and checkpoints store them.
        Assign a :class:`~hidiff.models.settings.RefineSettings` to change them.
        """
        return self._settings

    @settings.setter
    def settings(self, value: RefineSettings) -> None:
        if not isinstance(value, RefineSettings):
            raise TypeError(f"settings must be a RefineSettings, got {type(value).__name__}")
        self._settings = value

    def resolve_settings(self, **overrides) -> RefineSettings:
        """:attr:`settings` with the explicitly given sampling arguments replaced (see :meth:`refine`).

        Arguments left at :data:`STORED` keep the stored value; any other value wins, ``steps=None`` included
        (all T).
        """
        given = {name: value for name, value in overrides.items() if value is not STORED}
        unknown = sorted(set(given) - SAMPLING_ARGUMENTS)
        if unknown:
            raise TypeError(f"unknown sampling arguments {unknown}; expected some of {sorted(SAMPLING_ARGUMENTS)}")
        if "frozen" in given:
            frozen = given["frozen"]
            if isinstance(frozen, FrozenBBDM):
                given.pop("frozen")  # a given frozen refiner is used as it is, whatever the settings say
            elif not isinstance(frozen, bool):
                raise TypeError(f"frozen must be a bool or a FrozenBBDM, got {type(frozen).__name__}")
        return self.settings.override(**given)

    @property
    def num_classes(self) -> int:
        return self.segmentor.num_classes

    def prior(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The segmentor's prior and features.

        Args:
            x: float ``(B, Cimg, H, W)``.

        Returns:
            ``prior`` float ``(B, K, H, W)`` in (0, 1) and the 4 features at H/4..H/32
            (differentiable w.r.t. the segmentor when autograd is on).
        """
        logits, features = self.segmentor(x)
        return prior_from_logits(logits), list(features)

    def diffusion_loss(
        self,
        x: Tensor,
        y0: Tensor,
        prior: Tensor | None = None,
        features: list[Tensor] | None = None,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DiffusionLoss:
        """``L_Diff`` for one batch (one refiner forward).

        Args:
            x: float ``(B, Cimg, H, W)``.
            y0: float ``(B, K, H, W)`` one-hot ground truth.
            prior, features: the segmentor's outputs; computed from ``x`` when both are None (pass
                them computed under ``torch.no_grad()`` to train the refiner alone).
            t: int64 ``(B,)`` timesteps (uniform when None).
            generator: optional generator for t and the forward noise.

        Returns:
            the diffusion's ``DiffusionLoss(total, kl, focal)``; ``total`` is differentiable w.r.t.
            the refiner and, through the prior and the features, the segmentor.
        """
        if (prior is None) != (features is None):
            raise ValueError("prior and features must be given together (or both left None)")
        if prior is None:
            prior, features = self.prior(x)
        return self.diffusion.training_loss(
            lambda y_t, t_: self.refiner(x, y_t, prior, t_, features), y0, prior, t=t, generator=generator
        )

    def freeze(self, steps: int | None = None) -> FrozenBBDM:
        """A new deployable refiner (:class:`~hidiff.models.frozen.FrozenBBDM`) for a sampler of ``steps`` steps.

        It holds per-step tables for exactly the timesteps such a run visits
        (``self.diffusion.timesteps(steps)``, the same for DDIM and ancestral sampling). It is a
        snapshot, e.g. to save as an artifact; :meth:`refine` uses :meth:`frozen_refiner`, which
        keeps one up to date by itself.
        """
        return freeze(self.refiner, self.diffusion.timesteps(steps))

    def _refiner_state(self) -> tuple:
        """A fingerprint of everything the frozen form is derived from.

        Per tensor (parameters and buffers): storage, device, shape and version counter, and a copy of
        up to :data:`FINGERPRINT_SAMPLES` evenly spaced elements of it, read through views that
        share the tensor's storage, so that writes the version counter does not see (``.data``
        writes, numpy views, tensors made under ``torch.inference_mode``) are seen too; per module:
        its training flag and its public plain-valued attributes (BatchNorm ``eps``,
        ``prior_flip_rates``, ...). The views are built once per storage layout; a call then costs
        one gather of the sampled elements (whole-tensor writes always change some of them; a write
        to a single unsampled element of a large weight is not seen).
        """
        # One walk over the modules collects both the tensors and the settings (the recursive
        # parameters()/buffers() generators cost more than the fingerprint itself).
        tensors: list[Tensor] = []
        settings = []
        for module in self.refiner.modules():
            tensors += [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
            settings.append(_plain_settings(module))
        layout = tuple(
            (t.data_ptr(), t.device, tuple(t.shape), 0 if t.is_inference() else t._version) for t in tensors
        )
        if layout != self._sample_layout:
            self._sample_views = [_sampled_elements(t) for t in tensors]
            self._sample_layout = layout
        with torch.no_grad():
            views = [
                v if v.dim() == 1 and v.dtype == torch.float32 else v.reshape(-1).float() for v in self._sample_views
            ]
            contents = torch.cat(views) if views else torch.empty(0)
        return layout, contents, tuple(settings)

    def _state_changed(self, state: tuple) -> bool:
        """Whether `state` (of :meth:`_refiner_state`) differs from the one the cached frozen refiners came from."""
        if self._frozen_from is None:
            return True
        layout, contents, settings = state
        old_layout, old_contents, old_settings = self._frozen_from
        return layout != old_layout or settings != old_settings or not torch.equal(contents, old_contents)

    def frozen_refiner(self, steps: int | None = None) -> FrozenBBDM:
        """The frozen refiner for ``steps`` sampler steps, frozen once and reused.

        It is frozen again when the refiner's weights, buffers or module settings change (training,
        loading, any write to a weight, moving the model; see :meth:`_refiner_state`), so it always
        computes what ``refiner.eval()`` computes.

        Raises:
            TypeError: the refiner is not a :class:`~hidiff.models.BBDM` (only BBDMs can be frozen).
        """
        if not isinstance(self.refiner, BBDM):
            raise TypeError(f"only a BBDM refiner can be frozen, this one is a {type(self.refiner).__name__}")
        state = self._refiner_state()
        if self._state_changed(state):
            self._frozen_cache.clear()
            self._frozen_from = state
        timesteps = tuple(self.diffusion.timesteps(steps))
        frozen = self._frozen_cache.get(timesteps)
        if frozen is None:
            frozen = self._frozen_cache[timesteps] = freeze(self.refiner, timesteps)
        return frozen

    def _resolve_frozen(self, frozen: bool | FrozenBBDM, steps: int | None) -> FrozenBBDM | None:
        """The frozen refiner a refinement runs (None: the refiner layer by layer)."""
        if isinstance(frozen, FrozenBBDM):
            return frozen
        if not isinstance(frozen, bool):
            raise TypeError(f"frozen must be a bool or a FrozenBBDM, got {type(frozen).__name__}")
        # The frozen form computes the eval-mode refiner: a refiner with any module in training mode
        # (batch statistics) or one that cannot be frozen runs as it is.
        in_eval = not any(module.training for module in self.refiner.modules())
        if frozen and isinstance(self.refiner, BBDM) and in_eval:
            return self.frozen_refiner(steps)
        return None

    @torch.no_grad()
    def refine(
        self,
        x: Tensor,
        steps: int | None = STORED,
        samples: int = STORED,
        sampler: str = STORED,
        seed: int = STORED,
        frozen: bool | FrozenBBDM = STORED,
    ) -> Tensor:
        """Refined continuous map ``y0_hat`` (no gradients: the reverse chain samples Bernoulli draws).

        Every sampling argument left out takes the model's stored value (:attr:`settings`); given ones win.
        ``refine`` always runs the refiner, even where the stored settings turn refinement off (see
        :meth:`segment`).

        Args:
            x: float ``(B, Cimg, H, W)``, H and W divisible by 32.
            steps: reverse steps (None: all T).
            samples: ensemble size.
            sampler: ``"ddim"`` or ``"ancestral"``.
            seed: sampling seed.
            frozen: True (the stored default): with the refiner in eval mode, run its frozen form
                (:meth:`frozen_refiner`: packed weights, per-step tables, fused kernels, the
                condition computed once), the fast path; False: the refiner layer by layer; a
                :class:`~hidiff.models.frozen.FrozenBBDM`: that one.

        Returns:
            float32 ``(B, K, H, W)`` in [0, 1]. Call ``eval()`` first for inference statistics and
            the frozen refiner on the packed binary kernels.
        """
        prior, features = self.prior(x)
        return self.refine_from_prior(
            x, prior, features, steps=steps, samples=samples, sampler=sampler, seed=seed, frozen=frozen
        )

    @torch.no_grad()
    def refine_from_prior(
        self,
        x: Tensor,
        prior: Tensor,
        features: list[Tensor],
        steps: int | None = STORED,
        samples: int = STORED,
        sampler: str = STORED,
        seed: int = STORED,
        frozen: bool | FrozenBBDM = STORED,
    ) -> Tensor:
        """:meth:`refine` from an already computed prior and features (one segmentor pass serves both
        the segmentor's own prediction and the refinement).

        Args:
            x: float ``(B, Cimg, H, W)``.
            prior, features: outputs of :meth:`prior` for ``x``.
            steps, samples, sampler, seed, frozen: as in :meth:`refine`. With the frozen
                refiner, the image/feature condition cache is computed once and reused by every
                step and ensemble member.

        Returns:
            float32 ``(B, K, H, W)`` in [0, 1].

        Raises:
            ValueError: ``frozen`` lacks tables for some timestep the sampler visits.
        """
        settings = self.resolve_settings(steps=steps, samples=samples, sampler=sampler, seed=seed, frozen=frozen)
        form = frozen if isinstance(frozen, FrozenBBDM) else settings.frozen
        return self.diffusion.sample(
            self.denoiser(x, prior, features, settings.steps, form),
            prior,
            steps=settings.steps,
            sampler=settings.sampler,
            samples=settings.samples,
            seed=settings.seed,
        )

    def denoiser(
        self,
        x: Tensor,
        prior: Tensor,
        features: list[Tensor],
        steps: int | None = None,
        frozen: bool | FrozenBBDM = True,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """The refiner as a sampler's ``denoise_fn``: ``(y_t (B, K, H, W), t (B,)) -> eps_hat (B, K, H, W)``
        for the image ``x``, its prior and features, valid at the timesteps a run of ``steps`` visits.

        ``frozen`` as in :meth:`refine`: by default the frozen refiner, whose condition cache is
        computed here once for all calls.
        """
        frozen_model = self._resolve_frozen(frozen, steps)
        if frozen_model is None:
            return lambda y_t, t: self.refiner(x, y_t, prior, t, features)
        return self._frozen_denoiser(frozen_model, x, prior, features, steps)

    def _frozen_denoiser(
        self, frozen: FrozenBBDM, x: Tensor, prior: Tensor, features: list[Tensor], steps: int | None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """``(y_t, t) -> eps_hat`` of the frozen refiner, with the condition cache computed once here."""
        missing = sorted(set(self.diffusion.timesteps(steps)) - set(frozen.frozen_timesteps))
        if missing:
            raise ValueError(
                f"frozen has no tables for the timesteps {missing} that a run of steps={steps} visits (it has "
                f"{frozen.frozen_timesteps}): pass frozen=self.freeze({steps})"
            )
        cache = frozen.prepare(x, features, prior)
        return lambda y_t, t: frozen.step(cache, y_t, prior, t)

    @torch.no_grad()
    def segment(self, x: Tensor, refine: bool | None = None, **kwargs) -> Tensor:
        """Final mask: the refined map or the prior, thresholded at 0.5 (K = 1) or one-hot argmax (K > 1).

        With no arguments this is what the model was tuned to output (:attr:`settings`: the sampler setting chosen
        on validation, or the segmentor's own mask where refinement did not beat it there).

        Args:
            x: float ``(B, Cimg, H, W)``, H and W divisible by 32.
            refine: True: refine; False: the segmentor's mask; None (default): ``settings.refine``, or True when
                sampling arguments are given.
            **kwargs: sampling arguments of :meth:`refine` (``steps``, ``samples``, ``sampler``, ``seed``,
                ``frozen``); the stored settings fill the others.

        Returns:
            float32 ``(B, K, H, W)`` in {0, 1}.
        """
        if refine is None:
            refine = bool(kwargs) or self.settings.refine
        if refine:
            return self.diffusion.to_mask(self.refine(x, **kwargs))
        if kwargs:
            raise TypeError(f"segment(refine=False) takes no sampling arguments, got {sorted(kwargs)}")
        prior, _ = self.prior(x)
        return self.diffusion.to_mask(prior)
