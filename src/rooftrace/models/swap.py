"""A module's class swapped for a subclass with another ``forward``, for a faster computation of the same function.

The module keeps its parameters, their names and its saved file; only what ``forward`` runs changes. Used
for depthwise convolutions computed in fp32 under bf16 autocast (:func:`rooftrace.models.autocast.depthwise_in_fp32`)
and U-Net decoder blocks whose upsampling is a transposed convolution
(:func:`rooftrace.models.upsample_conv.use_transposed_upsampling`). Each ``(marker, class)`` pair gets one
subclass, made once.
"""

from __future__ import annotations

from typing import Any, Callable

_SUBCLASSES: dict[tuple[type, type], type] = {}


def swap_forward(module: Any, marker: type, make_forward: Callable[[type], Callable[..., Any]]) -> bool:
    """Give ``module`` the subclass of its class whose ``forward`` is ``make_forward(its class)`` and whose
    other base is ``marker`` (named ``marker.__name__`` without its leading underscore, then the class's name);
    False, and nothing changed, if it has it already."""
    if isinstance(module, marker):
        return False
    cls = type(module)
    key = (marker, cls)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{marker.__name__.lstrip('_')}{cls.__name__}", (marker, cls), {"forward": make_forward(cls)})
    module.__class__ = _SUBCLASSES[key]
    return True
