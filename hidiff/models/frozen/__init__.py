"""The deployable (frozen) refiner: :func:`freeze` turns a trained :class:`~hidiff.models.BBDM` into
its inference form :class:`FrozenBBDM`, which computes what ``refiner.eval()`` computes.

What freezing does (HIDIFF_SPEC section 2, last point):

* **Per-step lookup tables.** The time embedding depends on t only, and a sampler visits a few
  known timesteps. Every time-dependent vector (TB thresholds, TA shifts, FiLM scale/shift of the
  condition ResBlocks, the X-Former's TB/TA/LayerScale vectors) is computed once per timestep and
  stored as a ``(S, C)`` table, S = number of frozen timesteps; a step looks its rows up. A t that
  is not in the table raises a ValueError.
* **Folding.** BatchNorm (eval statistics), the XNOR-Net scale alpha and the conv bias become one
  per-channel ``(scale, bias)`` of the popcount; the X-Former's token BatchNorms become
  per-channel affines. Binary weights are packed once (1 bit each) and stored as buffers, so the
  frozen model's ``state_dict`` is the compact deployable artifact.
* **Fusion.** Every binary block is one :func:`hidiff_kernels.binary_conv2d_fused` call (conv ->
  affine -> + shortcut -> TA -> TB and packing of the output for the next layer), so an activation
  is written once and read once. DownBlock's parallel branches read the same TB(x): their packed
  weights are concatenated along O and run as one conv. UpBlock packs at low resolution and
  upsamples the packed words. A merge's input ``concat(up(h), skip)`` is packed part by part and the
  words concatenated when the first part fills whole words (channels % 32 == 0).
* **Condition cache.** The segmentor features and the image are fixed during a refinement:
  :meth:`FrozenBBDM.prepare` computes, once per image, the t-independent part of every condition
  ResBlock (``in_layers(feature)``, its GroupNorm ``out_norm`` and the skip path) and the image's
  share of the input conv (+ its bias); :meth:`FrozenBBDM.step` reuses it at every timestep. The
  X-Former has nothing else to cache: its key/value tokens come from the FiLM-conditioned
  (t-dependent) ResBlock output and every unit shifts its input by a t-dependent threshold.

Float rounding: folding BN and splitting the input conv change float results by about one ulp,
so an activation lying within an ulp of its TB threshold can binarise differently than in the
training-form model; tests/test_frozen.py measures how often that happens and its effect.

The frozen model is inference-only: it has no trainable parameters and the fused op has no
autograd formula.

Where things live: each training-form module computes its per-timestep vectors with its own
``time_tables`` method, which both its ``forward`` and the frozen form call; the frozen counterparts
of :mod:`hidiff.models.layers`, :mod:`hidiff.models.xformer` and :mod:`hidiff.models.bbdm` are
:mod:`.layers`, :mod:`.xformer` and :mod:`.bbdm` here. The refiner's wiring is the module-level
stage tables of :mod:`hidiff.models.bbdm` (``ENCODER``, ``BOTTLENECK``, ``DECODER``), walked by both
forms; the X-Former's is :func:`hidiff.models.xformer.exchange`.
"""

from .bbdm import ConditionCache, FrozenBBDM, freeze
from .layers import FrozenBlock
from .xformer import FrozenXFormer

__all__ = ["ConditionCache", "FrozenBBDM", "FrozenBlock", "FrozenXFormer", "freeze"]
