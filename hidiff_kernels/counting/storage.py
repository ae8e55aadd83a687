"""Parameter counts and model storage: 1 bit per binary weight, 32 bits per real parameter.

Convention (paper Table XI; it reproduces the Bi-Real ResNet-18 figure of 33,514,752 bits):

* the ``weight`` of every :class:`~hidiff_kernels.nn.BinaryConv2d` / ``BinaryLinear`` (and
  subclasses) is stored as 1 bit per element;
* every other parameter (real layers' weights and biases, binary layers' biases and thresholds,
  BatchNorm's affine weight and bias, TA's slopes, ...) as 32 bits;
* buffers (BatchNorm running mean and variance, counters) are not counted: at deployment a
  BatchNorm folds into a per-channel scale and shift, two numbers per channel, exactly what its
  affine parameters already count. The per-channel scale of a binary layer (``alpha = mean |W|``)
  is not a parameter either; :func:`packed_state_dict` stores it, 32 bits per output channel.

Parameters are counted once each, however many modules share them.
"""

from __future__ import annotations

import io

import torch
from torch import Tensor, nn

from hidiff_kernels.nn import BinaryConv2d, BinaryLinear

#: Bits of a real parameter (float32).
REAL_BITS = 32
#: Bits of a binary weight.
BINARY_BITS = 1


def binary_layers(model: nn.Module) -> dict[str, BinaryConv2d | BinaryLinear]:
    """The binary layers of ``model`` by qualified name (``named_modules`` order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))}


def parameter_storage(module: nn.Module, binary_weights: set[int] | None = None) -> tuple[int, int]:
    """Unique parameters of ``module`` and their storage in bits.

    Args:
        module: any module; every parameter in its subtree is counted once.
        binary_weights: ``id`` of the parameters stored at 1 bit. Default: the weights of the
            binary layers inside ``module`` (pass the whole model's set to count a submodule that
            shares a binary weight with a layer outside it).

    Returns:
        ``(params, bits)``: the number of parameter elements and the bits to store them.
    """
    if binary_weights is None:
        binary_weights = {id(layer.weight) for layer in binary_layers(module).values()}
    params = bits = 0
    for p in module.parameters():
        params += p.numel()
        bits += p.numel() * (BINARY_BITS if id(p) in binary_weights else REAL_BITS)
    return params, bits


def _packed_weight(layer: BinaryConv2d | BinaryLinear) -> tuple[Tensor, Tensor]:
    """The packed weights ``(O, KH, KW, words)`` and scales ``(O,)`` the layer's packed path runs with."""
    if isinstance(layer, BinaryLinear):
        # Subclasses change how the weights are packed (e.g. row-centred) through this hook.
        return layer._packed_weight()
    packed, scale = layer._packed.get(layer.weight)
    return torch.cat(packed), scale


@torch.no_grad()
def packed_state_dict(model: nn.Module, *, include_buffers: bool = False) -> dict[str, Tensor]:
    """The model's deployable weights: binary weights bit-packed, real parameters in float32.

    For each binary layer ``p``: ``p.weight_packed`` int32 ``(O, KH, KW, ceil(I/32))`` (a linear
    has ``KH = KW = 1``; the bit layout of :func:`hidiff_kernels.pack_weight`) and
    ``p.weight_scale`` float32 ``(O,)`` (alpha). Every other parameter under its own key as a
    float32 copy.

    Args:
        model: any module.
        include_buffers: also store the buffers (floating ones as float32), e.g. to reload
            BatchNorm running statistics; off by default, as in the storage convention.

    Returns:
        An ordered dict of tensors that own their storage (``torch.save`` writes no shared
        larger storage).
    """
    layers = binary_layers(model)
    binary_keys = {f"{name}.weight" if name else "weight": name for name in layers}
    state: dict[str, Tensor] = {}
    for key, param in model.named_parameters():
        if key in binary_keys:
            name = binary_keys[key]
            prefix = f"{name}." if name else ""
            packed, scale = _packed_weight(layers[name])
            state[prefix + "weight_packed"] = packed.contiguous().clone()
            state[prefix + "weight_scale"] = scale.to(torch.float32, copy=True)
        else:
            state[key] = param.detach().to(torch.float32, copy=True)
    if include_buffers:
        for key, buffer in model.named_buffers():
            dtype = torch.float32 if buffer.dtype.is_floating_point else buffer.dtype
            state[key] = buffer.detach().to(dtype, copy=True)
    return state


def state_dict_bytes(state_dict: dict[str, Tensor]) -> int:
    """Size in bytes of ``torch.save(state_dict)`` (written to memory, not to disk)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getbuffer().nbytes
