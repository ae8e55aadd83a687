"""The frozen refiner :class:`FrozenBBDM` (the inference form of :class:`~hidiff.models.BBDM`) and :func:`freeze`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bbdm import (
    BBDM,
    BOTTLENECK,
    CONDITIONED,
    DECODER,
    ENCODER,
    check_image_and_features,
    check_state,
    check_timesteps,
)
from ..layers import BinaryBlock, ConcatLayer, DownBlock, channel_pair_mean, flip_probability, flip_scale
from ..xformer import XFormer
from .layers import FrozenBlock, FrozenConcat, FrozenHead, avg_pool2x2, pair_mean_of_concat, upsample2x
from .xformer import FrozenXFormer

__all__ = ["ConditionCache", "FrozenBBDM", "freeze"]

FrozenLayer = FrozenBlock | FrozenConcat | FrozenXFormer

#: Bytes of condition outputs a :class:`ConditionCache` keeps for reuse (C = 128 at 256x256: 6.4 MB a step).
MODULATED_BUDGET_BYTES = 256 * 2**20


def freeze_layer(layer: nn.Module, emb: Tensor) -> FrozenLayer:
    """The inference form of one of the refiner's layers at the time embeddings ``emb (S, E)``."""
    if isinstance(layer, (BinaryBlock, DownBlock)):
        return FrozenBlock.from_block(layer, emb)
    if isinstance(layer, ConcatLayer):
        return FrozenConcat(layer, emb)
    if isinstance(layer, XFormer):
        return FrozenXFormer(layer, emb)
    raise TypeError(f"no frozen form for a {type(layer).__name__}")


#: Every layer of the stage tables, in the order a forward pass runs them.
LAYER_ORDER: tuple[str, ...] = (
    *(name for level in ENCODER for name in level if name is not None),
    *BOTTLENECK,
    *(name for level in DECODER for name in level),
)
#: The layer that reads each layer's output (the last one has none).
FOLLOWING: dict[str, str] = dict(zip(LAYER_ORDER[:-1], LAYER_ORDER[1:], strict=True))


@dataclass(frozen=True)
class ConditionCache:
    """What :meth:`FrozenBBDM.prepare` computes once per image and every step reuses.

    Attributes:
        image_term: float32 ``(B, C, H, W)``: the image's share of the input conv, plus its bias
            (and the prior's share when the prior was given to :meth:`FrozenBBDM.prepare`).
        conditions: per layer that reads a segmentor feature (``CONDITIONED``: concat1, concat2,
            concat3 at H/4..H/16, then the bottleneck's ``fuse`` at H/32), its condition
            ResBlock's ``(normed, skip)``, float32 ``(B, E_i, H_i, W_i)`` each.
        prior: the prior whose share ``image_term`` includes, or None.
        input_buffer: float32 ``(B, C, H * W)`` that every step's input-conv output is written into
            (with a cached prior).
        workspace: reusable per-step tensors (the decoder's upsampled shortcuts and pair means),
            created at the first step. Large fresh allocations are mapped anew by the C library
            on every call and pay a page fault per 4 KiB on first touch (milliseconds per
            full-resolution map); reusing them removes that. A cache therefore serves one
            refinement at a time.
        modulated: the condition ResBlocks' outputs per (layer, steps), computed at a step's
            first visit and reused by later visits of the same steps: an ensemble runs every
            step once per member, and the condition depends on the image and t only. At most
            :data:`MODULATED_BUDGET_BYTES` are kept (long chains keep their first steps).
    """

    image_term: Tensor
    conditions: dict[str, tuple[Tensor, Tensor]]
    prior: Tensor | None = None
    input_buffer: Tensor | None = None
    workspace: dict[str, Tensor] = field(default_factory=dict)
    modulated: dict[tuple[str, tuple[int, ...]], Tensor] = field(default_factory=dict)

    def buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The workspace tensor ``name`` of ``shape`` (dtype and device of ``like``), created once."""
        tensor = self.workspace.get(name)
        if tensor is None or tuple(tensor.shape) != tuple(shape):
            tensor = like.new_empty(shape)
            self.workspace[name] = tensor
        return tensor

    def condition(self, name: str, layer: FrozenConcat | FrozenXFormer, idx: Tensor, steps: tuple[int, ...]) -> Tensor:
        """The output of ``layer``'s condition ResBlock at the step indices ``idx`` (``steps`` as a tuple)."""
        key = (name, steps)
        out = self.modulated.get(key)
        if out is None:
            out = layer.condition(self.conditions[name], idx)
            used = sum(t.numel() * t.element_size() for t in self.modulated.values())
            if used + out.numel() * out.element_size() <= MODULATED_BUDGET_BYTES:
                self.modulated[key] = out
        return out


def _check_frozen_timesteps(timesteps: Sequence[int]) -> tuple[int, ...]:
    values = tuple(timesteps)
    if not values or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in values):
        raise ValueError(f"timesteps must be a non-empty sequence of non-negative ints, got {timesteps!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"timesteps must be distinct, got {values}")
    return values


class FrozenBBDM(nn.Module):
    """Inference form of a :class:`~hidiff.models.BBDM` for a fixed set of timesteps.

    Build it with :func:`freeze` (or ``FrozenBBDM(refiner, timesteps)``); reload a saved one with
    :meth:`from_state_dict` or ``load_state_dict`` into :meth:`from_config`'s shell. Its layers
    have the names of the refiner's (see :data:`LAYER_ORDER`).

    Args:
        refiner: the trained refiner (binary or real; its eval-mode BatchNorm statistics are used,
            whatever its mode).
        timesteps: the timesteps the frozen model can be called at (e.g. the ones a sampler
            visits, :func:`hidiff.diffusion.respace`).

    Shapes:
        ``prepare(image, features)``: image float ``(B, Cimg, H, W)``, features 4 float tensors
        ``(B, cond_channels[i], H / 2^(i+2), W / 2^(i+2))`` -> :class:`ConditionCache`.
        ``step(cache, y_t, prior, t)``: y_t, prior float ``(B, K, H, W)``, t int ``(B,)``, a scalar
        tensor or an int -> ``eps_hat`` float32 ``(B, K, H, W)`` in (0, 1).
        ``forward(image, y_t, prior, t, features)``: both at once (BBDM's signature).
    """

    def __init__(self, refiner: BBDM, timesteps: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(refiner, BBDM):
            raise TypeError(f"refiner must be a BBDM, got {type(refiner).__name__}")
        timesteps = _check_frozen_timesteps(timesteps)
        self.refiner_config = refiner.config
        self.image_channels = refiner.image_channels
        self.num_classes = refiner.num_classes
        self.cond_channels = tuple(refiner.cond_channels)
        self.binary = refiner.binary
        self.use_xformer = refiner.use_xformer
        self.prior_flip_rates = refiner.prior_flip_rates
        self.frozen_timesteps = timesteps
        device = refiner.input_conv.weight.device
        with torch.no_grad():
            emb = refiner.time_embed(torch.tensor(timesteps, dtype=torch.int64, device=device))
            self.register_buffer("timesteps", torch.tensor(timesteps, dtype=torch.int64, device=device))
            weight = refiner.input_conv.weight.detach().float()
            self.register_buffer("input_image_weight", weight[:, : self.image_channels].contiguous())
            self.register_buffer("input_state_weight", weight[:, self.image_channels :].contiguous())
            self.register_buffer("input_bias", refiner.input_conv.bias.detach().float().contiguous())
            for name in LAYER_ORDER:
                self.add_module(name, freeze_layer(getattr(refiner, name), emb))
            self.head = FrozenHead(refiner.head)
        self.requires_grad_(False)
        self.eval()

    # --- construction and serialisation ---------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The refiner's configuration (:attr:`BBDM.config`) and the frozen ``timesteps``: :meth:`from_config`
        builds the shell."""
        return {**self.refiner_config, "timesteps": list(self.frozen_timesteps)}

    def get_extra_state(self) -> dict[str, Any]:
        """The config travels in the ``state_dict`` (key ``_extra_state``), making it self-describing."""
        return self.config

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state != self.config:
            raise ValueError(f"state_dict was saved from a FrozenBBDM with config {state}, this one has {self.config}")

    @classmethod
    def from_config(cls, config: dict[str, Any], device: torch.device | str = "cpu") -> FrozenBBDM:
        """An uninitialised frozen model of the given :attr:`config` (fill it with ``load_state_dict``).

        The shell is built by freezing a refiner on the meta device (no memory, no computation),
        so its buffers have the shapes of the real artifact.
        """
        config = dict(config)
        timesteps = config.pop("timesteps", None)
        if timesteps is None:
            raise ValueError(f"config must hold 'timesteps', got keys {sorted(config)}")
        with torch.device("meta"):
            refiner = BBDM(**config)
        return cls(refiner, [int(t) for t in timesteps]).to_empty(device=device)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Any], device: torch.device | str = "cpu") -> FrozenBBDM:
        """Rebuilds a frozen model from its ``state_dict`` (e.g. ``torch.load(path, weights_only=True)``).

        Raises:
            ValueError: the state_dict has no ``_extra_state`` config (it is not a FrozenBBDM's).
        """
        config = state_dict.get("_extra_state")
        if not isinstance(config, dict):
            raise ValueError("state_dict has no '_extra_state' config: it was not saved from a FrozenBBDM")
        model = cls.from_config(config, device)
        model.load_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())

    # --- inference --------------------------------------------------------------------------

    def step_index(self, t: Tensor | int, batch: int) -> Tensor:
        """Row of every sample's timestep in the per-step tables.

        Args:
            t: int ``(batch,)`` tensor, a scalar tensor or an int.
            batch: B.

        Returns:
            int64 ``(batch,)`` on the model's device.

        Raises:
            ValueError: a timestep is not one of the frozen timesteps (the message names it), or
                t has the wrong shape.
        """
        t = check_timesteps(t, batch)
        match = t.to(self.timesteps.device, torch.float64)[:, None] == self.timesteps.to(torch.float64)[None, :]
        found = match.any(dim=1)
        if not bool(found.all()):
            missing = sorted({v.item() for v in t[~found.to(t.device)]})
            raise ValueError(
                f"t={missing} is not one of the frozen timesteps {self.frozen_timesteps}: freeze the refiner "
                "for the timesteps the sampler visits (HiDiff.freeze(steps) or freeze(refiner, timesteps))"
            )
        return match.to(torch.int64).argmax(dim=1)

    def prepare(self, image: Tensor, features: Sequence[Tensor], prior: Tensor | None = None) -> ConditionCache:
        """The per-image, t-independent part of the refiner (see :class:`ConditionCache`).

        Args:
            image: float ``(B, Cimg, H, W)``; features: the segmentor's 4 feature maps.
            prior: optional float ``(B, K, H, W)``: the prior every :meth:`step` of this refinement
                will pass; its share of the input conv is then computed here once as well.
        """
        check_image_and_features(image, features, self.image_channels, self.cond_channels)
        image_term = F.conv2d(image.float(), self.input_image_weight, self.input_bias, padding=1)
        input_buffer = None
        if prior is not None:
            check_state("prior", prior, (image.shape[0], self.num_classes, *image.shape[2:]))
            image_term = self._prior_term(image_term, prior)
            input_buffer = image_term.new_empty((image_term.shape[0], image_term.shape[1], image_term[0, 0].numel()))
        return ConditionCache(
            image_term,
            {
                name: getattr(self, name).condition.prepare(feature.float())
                for name, feature in zip(CONDITIONED, features, strict=True)
            },
            prior,
            input_buffer,
        )

    def _prior_term(self, image_term: Tensor, prior: Tensor) -> Tensor:
        """``image_term`` plus the prior's share of the input conv (``(B, C, H, W)``, a new tensor)."""
        prior_weight = self.input_state_weight[:, self.num_classes :]
        return F.conv2d(prior.float(), prior_weight, None, padding=1).add_(image_term)

    def _input_conv(self, cache: ConditionCache, y_t: Tensor, prior: Tensor) -> Tensor:
        """The input conv of ``concat(image, y_t, prior)``: ``(B, C, H, W)`` float32.

        Only y_t's K channels change per step: their 3x3 conv is one small GEMM over the 9K
        shifted copies of y_t, accumulated onto the image and prior terms (cached by
        :meth:`prepare` when it was given the prior, then written into the cache's buffer).
        """
        if cache.prior is None:
            base, buffer = self._prior_term(cache.image_term, prior), None
        else:
            if prior is not cache.prior and not torch.equal(prior, cache.prior):
                raise ValueError("prior must be the prior given to prepare(), whose share of the input conv is cached")
            base, buffer = cache.image_term, cache.input_buffer
        batch, channels, height, width = base.shape
        weight = self.input_state_weight[:, : self.num_classes].reshape(1, channels, -1).expand(batch, -1, -1)
        columns = F.unfold(y_t.float(), 3, padding=1)
        out = torch.baddbmm(base.view(batch, channels, -1), weight, columns, out=buffer)
        return out.view(batch, channels, height, width)

    def _next_threshold(self, name: str, idx: Tensor) -> Tensor | None:
        """The threshold at which layer ``name`` prepares its output for the layer that reads it
        (:data:`FOLLOWING`; None: that layer reads it in float, or ``name`` is the last layer)."""
        following = FOLLOWING.get(name)
        return None if following is None else getattr(self, following).entry_threshold(idx)

    def _block(self, name: str, h: Tensor, h_in: Tensor | None, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """An equal-width block (identity shortcut) on ``h``, prepared as ``h_in`` (or here when None)."""
        block: FrozenBlock = getattr(self, name)
        if h_in is None:
            h_in = block.prepare(h, idx)
        return block(h_in, h, idx, self._next_threshold(name, idx))

    def _down(self, name: str, h: Tensor, h_in: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """A DownBlock: every branch adds AvgPool2d(2)(x); the branches are one conv with concatenated outputs."""
        block: FrozenBlock = getattr(self, name)
        pooled = avg_pool2x2(h)
        branches = block.out_channels // block.in_channels
        residual = pooled if branches == 1 else torch.cat([pooled] * branches, dim=1)
        return block(h_in, residual, idx, self._next_threshold(name, idx))

    def _fuse(
        self,
        name: str,
        h: Tensor,
        h_in: Tensor | None,
        cache: ConditionCache,
        idx: Tensor,
        steps: tuple[int, ...],
    ) -> tuple[Tensor, Tensor | None]:
        """A layer that reads a segmentor feature (FrozenConcat or FrozenXFormer) with its cached condition."""
        layer = getattr(self, name)
        return layer(h, h_in, cache.condition(name, layer, idx, steps), idx, self._next_threshold(name, idx))

    def _decode(self, cache: ConditionCache, h: Tensor, h_in: Tensor, skips: list[Tensor], idx: Tensor) -> Tensor:
        """The decoder. An UpBlock runs from ``h`` packed at low resolution (nearest x2 commutes with TB
        and with the channel-pair-mean shortcut, so both run before the upsampling); a merge block
        reads ``concat(up(h), skip)`` packed part by part."""
        for i, (up_name, merge_name) in enumerate(DECODER):
            up: FrozenBlock = getattr(self, up_name)
            merge: FrozenBlock = getattr(self, merge_name)
            skip = skips.pop()
            batch, _, height, width = skip.shape
            shortcut = h if up.in_channels == up.out_channels else channel_pair_mean(h)
            residual = upsample2x(shortcut, cache.buffer(f"up{i}", (batch, up.out_channels, height, width), skip))
            h, h_in = up(up.conv.upsample_input(h_in), residual, idx, merge.prefix_threshold(idx, up.out_channels))
            merge_in = merge.prepare_concat(h, h_in, skip, idx)
            pair_mean = cache.buffer(f"merge{i}", (batch, merge.out_channels, height, width), skip)
            residual = pair_mean_of_concat(h, skip, pair_mean)
            h, h_in = merge(merge_in, residual, idx, self._next_threshold(merge_name, idx))
        return h

    def step(self, cache: ConditionCache, y_t: Tensor, prior: Tensor, t: Tensor | int) -> Tensor:
        """One refiner evaluation ``eps_hat`` float32 ``(B, K, H, W)`` from the cache of :meth:`prepare`.

        Raises:
            ValueError: y_t/prior do not match the cached image's shape, or t is not a frozen timestep.
        """
        batch, _, height, width = cache.image_term.shape
        for name, value in (("y_t", y_t), ("prior", prior)):
            check_state(name, value, (batch, self.num_classes, height, width), "the cached image")
        idx = self.step_index(t, batch)
        steps = tuple(idx.tolist())
        h = self._input_conv(cache, y_t, prior)

        # Encoder: each layer prepares (packs) its output for the layer that reads it.
        h_in = None
        skips = []
        for block, concat, down in ENCODER:
            h, h_in = self._block(block, h, h_in, idx)
            if concat is not None:
                h, h_in = self._fuse(concat, h, h_in, cache, idx, steps)
            skips.append(h)
            h, h_in = self._down(down, h, h_in, idx)
        mid1, fuse, mid2 = BOTTLENECK
        h, h_in = self._block(mid1, h, h_in, idx)
        h, h_in = self._fuse(fuse, h, h_in, cache, idx, steps)
        h, h_in = self._block(mid2, h, h_in, idx)
        h = self._decode(cache, h, h_in, skips, idx)
        scale = flip_scale(self.prior_flip_rates, self.timesteps[idx])
        return flip_probability(self.head(h), y_t, prior, scale)

    def forward(self, image: Tensor, y_t: Tensor, prior: Tensor, t: Tensor | int, features: Sequence[Tensor]) -> Tensor:
        """``step(prepare(image, features), y_t, prior, t)``: BBDM's call signature."""
        return self.step(self.prepare(image, features), y_t, prior, t)


def freeze(refiner: BBDM, timesteps: Sequence[int]) -> FrozenBBDM:
    """The deployable inference form of ``refiner`` for the given timesteps.

    Args:
        refiner: a trained :class:`~hidiff.models.BBDM` (binary or real). Its eval-mode behaviour
            is frozen (BatchNorm running statistics), whatever its current mode; it is not modified.
        timesteps: distinct non-negative ints, e.g. ``diffusion.timesteps(steps)`` for a sampler.

    Returns:
        a :class:`FrozenBBDM` on the refiner's device, in eval mode, without trainable parameters.
    """
    return FrozenBBDM(refiner, timesteps)
