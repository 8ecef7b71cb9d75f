"""One-line DICE on a stock pipeline: ``enable_dice(pipe, sharpener)``, ``disable_dice(pipe)``.

After ``enable_dice`` a plain ``pipe(prompt, negative_prompt=..., num_images_per_prompt=..., generator=...)``
samples the sharpened prompts at one network evaluation per step, as ``generate(method=Dice(sharpener, ...))``
does: with the sharpener's recorded settings (``config["sampling"]``: alpha, and the steps the edit acts on)
unless ``enable_dice`` is told otherwise. With the edit on every step the call is exactly
``pipe(**sharpen(pipe, sharpener, prompt, negative_prompt=..., alpha=..., num_images_per_prompt=...),
guidance_scale=1.0, <every other argument>)`` on the stock pipeline. A sharpener whose edit depends on the
timestep (which ``sharpen`` refuses) is applied at each step's own timestep, as ``Dice`` does.

How: the instance's class is swapped for a small subclass of its own class (made once per pipeline class)
whose ``__call__`` encodes the prompts, asks the ``Dice`` method for its plan (the stock pipeline's keyword
arguments, and the guide of an interval: ``sampling/steps.py``) and calls the stock ``__call__`` under it; no
pipeline code is copied. The subclass keeps the stock class's name, so ``save_pretrained``
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
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import DiceError
from ..families import check_compatible, family_of
from ..sharpener import Sharpener
from .generate import encoded_prompts, whole_number
from .methods import Dice
from .steps import Guide, routed

log = logging.getLogger(__name__)
SETTINGS = "_dice_settings"  # the instance attribute that holds a pipeline's ``Dice`` method
# text-side arguments that sharpen() does not take; refused next to a prompt unless left at their default
UNSHARPENED = ("prompt_2", "negative_prompt_2", "clip_skip", "clean_caption", "max_sequence_length")


@dataclass(frozen=True)
class EnabledCall:
    """The stock ``__call__``'s arguments for one call of an enabled pipeline, and the guide of its steps (None:
    as the pipeline runs them) over its ``images``."""

    kwargs: dict[str, Any]
    guide: Guide | None = None
    images: int = 0


class DicePipeline:
    """The mixin of an enabled pipeline's class: its ``__call__`` sharpens the prompt, then runs the stock one."""

    _dice_stock: type  # the stock pipeline class (set on each subclass made by ``dice_class``)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = dice_call(
            self, self.__dict__[SETTINGS], named_arguments(self._dice_stock.__call__, args, kwargs)
        )
        if call.guide is None:
            return super().__call__(**call.kwargs)
        with routed(self, family_of(self).denoiser(self), call.images, call.guide):
            return super().__call__(**call.kwargs)

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


def guidance_scale_of(scale: Any) -> float | None:
    """The ``guidance_scale`` of an enabled call: None (left out) or a finite number; a ``DiceError`` else."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise DiceError(f"guidance_scale must be a finite number or left out (got {scale!r}).")
    return float(scale)


def dice_call(pipe: Any, method: Dice, call: dict[str, Any]) -> EnabledCall:
    """The stock ``__call__``'s arguments for a call to an enabled pipeline (see the module docstring)."""
    call = dict(call)
    scale = guidance_scale_of(call.pop("guidance_scale", None))
    prompt = call.pop("prompt", None)
    if prompt is None:  # embeddings from the caller: run as given, without a silent switch to CFG
        return EnabledCall({**call, "guidance_scale": 1.0 if scale is None else scale})
    if scale is not None and scale > 1:
        raise DiceError(
            f"guidance_scale={scale!r}: a pipeline with DICE enabled samples without guidance (one network "
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
    n = call.pop("num_images_per_prompt", None)
    n = 1 if n is None else whole_number(n, "num_images_per_prompt")
    fam = family_of(pipe)
    _, negs, cond, neg = encoded_prompts(pipe, fam, prompt, call.pop("negative_prompt", None))
    plan = method.plan(pipe, fam, cond, neg, [bool(x) for x in negs])
    kwargs = {
        **call,
        **plan.kwargs,
        "num_images_per_prompt": n,
        "guidance_scale": 1.0 if scale is None else scale,
    }
    return EnabledCall(kwargs, plan.guide, len(cond) * n)


def is_default(value: Any, default: Any) -> bool:
    """Whether an argument was given at its default (compared by identity, and by value for plain values)."""
    plain = (type(None), bool, int, float, str)
    return value is default or (isinstance(value, plain) and isinstance(default, plain) and value == default)


def enable_dice(
    pipe: Any,
    sharpener: Sharpener,
    alpha: float | None = None,
    *,
    start: float | None = None,
    stop: float | None = None,
) -> Any:
    """Make a plain ``pipe(prompt, negative_prompt=...)`` sample with DICE (one network evaluation per step).

    DICE as ``Dice(sharpener, alpha=alpha, start=start, stop=stop)`` samples it: settings left out are the ones
    the sharpener records (``config["sampling"]``, written by `dice tune`; its own for images with a negative
    prompt), else alpha 1 on every step; an interval acts through the same step guide as ``generate``. The
    negative prompt goes to the sharpener as c_neg (default: the empty prompt). ``guidance_scale`` is 1 unless
    given; a value > 1 next to a prompt is refused (``DiceError``). Enabling again replaces the sharpener and
    settings. A sharpener trained for another family, width or token count is refused here.

    Args:
        pipe: a stock diffusers pipeline of a supported family; changed in place (its class).
        sharpener: the ``Sharpener`` to apply to every prompt the pipeline is called with.
        alpha: the strength of the edit, c + alpha * delta (0: plain unguided sampling; default: recorded, else 1).
        start: first step of the edit, a fraction of the steps (default: recorded, else 0).
        stop: end of the edit's steps, a fraction (default: recorded, else 1).

    Returns:
        ``pipe`` (the same object), for chaining.
    """
    if not isinstance(sharpener, Sharpener):
        raise DiceError(
            f"enable_dice needs a Sharpener, not {type(sharpener).__name__}: "
            f"enable_dice(pipe, Sharpener.from_pretrained({sharpener!r} or a folder))."
        )
    check_compatible(pipe, sharpener)
    method = Dice(
        sharpener, alpha=alpha, start=start, stop=stop
    )  # checks the settings, recorded ones included
    stock = stock_class(pipe)
    pipe.__dict__[SETTINGS] = method
    pipe.__class__ = dice_class(stock)
    log.info(
        "DICE enabled on %s (%s): pipe(prompt, negative_prompt=...) runs one network evaluation per step; "
        "disable_dice(pipe) restores it",
        stock.__name__,
        method.setting,
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
