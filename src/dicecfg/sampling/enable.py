"""One-line DICE on a stock pipeline: ``enable_dice(pipe, sharpener)``, ``disable_dice(pipe)``.

After ``enable_dice`` a plain ``pipe(prompt, negative_prompt=..., num_images_per_prompt=..., generator=...)``
samples the sharpened prompts at one network evaluation per step: the call is exactly
``pipe(**sharpen(pipe, sharpener, prompt, negative_prompt=..., alpha=..., num_images_per_prompt=...),
guidance_scale=1.0, <every other argument>)`` on the stock pipeline.

How: the instance's class is swapped for a small subclass of its own class (made once per pipeline class)
whose ``__call__`` turns the text arguments into ``sharpen()``'s keyword arguments and calls the stock
``__call__``; no pipeline code is copied. The subclass keeps the stock class's name, so ``save_pretrained``
writes the same ``model_index.json``, and ``isinstance`` checks and family detection see the same class.
``disable_dice`` puts the stock class back and drops the settings: the instance is as it was before.
An enabled pipeline pickles (under the stock class's name) and unpickles DICE-enabled.

``guidance_scale``: left out, it is 1 (the stock defaults of 4.5-7.5 would switch CFG back on). A value > 1
next to a prompt is refused with a ``DiceError`` rather than silently changed: the caller asked for CFG,
which an enabled pipeline does not do (``disable_dice`` first, or use ``generate(method="cfg")``).
Calls that pass embeddings instead of a prompt (``prompt_embeds=...``, as ``sharpen()`` and ``generate()``
do) run as given, so every method of ``generate()`` still works on an enabled pipeline.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import DiceError
from ..families import check_compatible
from ..sharpener import Sharpener
from .checks import check_alpha
from .generate import sharpen

log = logging.getLogger(__name__)
SETTINGS = "_dice_settings"  # the instance attribute that holds a pipeline's DiceSettings
# text-side arguments that sharpen() does not take; refused next to a prompt unless left at their default
UNSHARPENED = ("prompt_2", "negative_prompt_2", "clip_skip", "clean_caption", "max_sequence_length")


@dataclass(frozen=True)
class DiceSettings:
    """What an enabled pipeline sharpens its prompts with."""

    sharpener: Sharpener
    alpha: float


class DicePipeline:
    """The mixin of an enabled pipeline's class: its ``__call__`` sharpens the prompt, then runs the stock one."""

    _dice_stock: type  # the stock pipeline class (set on each subclass made by ``dice_class``)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = named_arguments(self._dice_stock.__call__, args, kwargs)
        return super().__call__(**dice_arguments(self, self.__dict__[SETTINGS], call))

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickle as the stock pipeline does (its ``__dict__``, the DICE settings included), but name the stock
        class: the enabled class is made at run time and cannot be found by name. Unpickling makes the enabled
        class again (``new_enabled``), so the copy is DICE-enabled with the same sharpener and alpha."""
        _, _, *rest = object.__reduce_ex__(self, max(2, protocol))  # (copyreg.__newobj__, (cls,), state, ...)
        return (new_enabled, (self._dice_stock,), *rest)


_CLASSES: dict[type, type] = {}


def dice_class(stock: type) -> type:
    """The enabled counterpart of a pipeline class (one per class, so repeated enabling adds no classes)."""
    if stock not in _CLASSES:
        attrs = {"_dice_stock": stock, "__doc__": stock.__doc__, "__qualname__": stock.__qualname__}
        _CLASSES[stock] = type(stock.__name__, (DicePipeline, stock), attrs)
    return _CLASSES[stock]


def new_enabled(stock: type) -> Any:
    """An empty instance of ``stock``'s enabled class, for unpickling (the state is set on it afterwards)."""
    cls = dice_class(stock)
    return cls.__new__(cls)


def named_arguments(fn: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call to the method ``fn`` by name (positional ones included, ``self`` left out),
    as they were given: defaults are not filled in."""
    sig = inspect.signature(fn)
    bound = sig.bind(None, *args, **kwargs)  # a TypeError for arguments the stock call would refuse too
    out: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"unexpected positional arguments {value!r}")
        else:
            out[name] = value
    return out


def dice_arguments(pipe: Any, settings: DiceSettings, call: dict[str, Any]) -> dict[str, Any]:
    """The stock ``__call__``'s arguments for a call to an enabled pipeline (see the module docstring)."""
    call = dict(call)
    scale = call.pop("guidance_scale", None)
    prompt = call.pop("prompt", None)
    if prompt is None:  # embeddings from the caller: run as given, without a silent switch to CFG
        return {**call, "guidance_scale": 1.0 if scale is None else scale}
    if scale is not None and scale > 1:
        raise DiceError(
            f"guidance_scale={scale}: a pipeline with DICE enabled samples without guidance (one network "
            "evaluation per step), so guidance_scale must be left out or <= 1. Set the edit's strength with "
            "enable_dice(pipe, sharpener, alpha=...); for CFG call disable_dice(pipe) first."
        )
    params = inspect.signature(pipe._dice_stock.__call__).parameters
    foreign = [
        k
        for k, v in call.items()
        if (k in UNSHARPENED or k.endswith(("_embeds", "attention_mask")))
        and k in params
        and not is_default(v, params[k].default)
    ]
    if foreign:
        raise DiceError(
            f"A pipeline with DICE enabled encodes and sharpens `prompt` itself; it does not take "
            f"{', '.join(foreign)} next to it. Leave them out, or build the embeddings with "
            "dicecfg.sharpen(...) and pass those instead of a prompt."
        )
    sharpened = sharpen(
        pipe,
        settings.sharpener,
        prompt,
        negative_prompt=call.pop("negative_prompt", None),
        alpha=settings.alpha,
        num_images_per_prompt=1 if (n := call.pop("num_images_per_prompt", None)) is None else n,
    )
    return {**call, **sharpened, "guidance_scale": 1.0 if scale is None else scale}


def is_default(value: Any, default: Any) -> bool:
    """Whether an argument was given at its default (compared by identity, and by value for plain values)."""
    plain = (type(None), bool, int, float, str)
    return value is default or (isinstance(value, plain) and isinstance(default, plain) and value == default)


def enable_dice(pipe: Any, sharpener: Sharpener, alpha: float = 1.0) -> Any:
    """Make a plain ``pipe(prompt, negative_prompt=...)`` sample with DICE (one network evaluation per step).

    The negative prompt goes to the sharpener as c_neg (default: the empty prompt). ``guidance_scale`` is 1
    unless given; a value > 1 next to a prompt is refused (``DiceError``). Enabling again replaces the
    sharpener and ``alpha``. A sharpener trained for another family, width or token count is refused here.

    Args:
        pipe: a stock diffusers pipeline of a supported family; changed in place (its class).
        sharpener: the ``Sharpener`` to apply to every prompt the pipeline is called with.
        alpha: the strength of the edit, c + alpha * delta (0: plain unguided sampling).

    Returns:
        ``pipe`` (the same object), for chaining.
    """
    if not isinstance(sharpener, Sharpener):
        raise DiceError(
            f"enable_dice needs a Sharpener, not {type(sharpener).__name__}: "
            f"enable_dice(pipe, Sharpener.from_pretrained({sharpener!r} or a folder))."
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise DiceError(f"alpha must be a number (got {alpha!r}).")
    check_compatible(pipe, sharpener)
    check_alpha(alpha)
    stock = stock_class(pipe)
    pipe.__dict__[SETTINGS] = DiceSettings(sharpener, float(alpha))
    pipe.__class__ = dice_class(stock)
    log.info(
        "DICE enabled on %s (alpha=%g): pipe(prompt, negative_prompt=...) runs one network evaluation per "
        "step; disable_dice(pipe) restores it",
        stock.__name__,
        alpha,
    )
    return pipe


def disable_dice(pipe: Any) -> Any:
    """Undo ``enable_dice``: the pipeline's own class again, and no DICE settings (a no-op when not enabled).

    Args:
        pipe: a pipeline, DICE-enabled or not; changed in place.

    Returns:
        ``pipe`` (the same object).
    """
    if not hasattr(pipe, "__dict__") or not callable(pipe):
        raise DiceError(f"disable_dice needs a pipeline, not {type(pipe).__name__}.")
    pipe.__class__ = stock_class(pipe)
    pipe.__dict__.pop(SETTINGS, None)
    return pipe


def stock_class(pipe: Any) -> type:
    """The pipeline's class without DICE."""
    return pipe._dice_stock if isinstance(pipe, DicePipeline) else type(pipe)


def dice_enabled(pipe: Any) -> bool:
    """Whether ``enable_dice`` is in effect on ``pipe``."""
    return isinstance(pipe, DicePipeline)
