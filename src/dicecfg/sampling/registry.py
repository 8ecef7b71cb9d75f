"""The one list of sampling methods: their spellings (``cfg:w=5,stop=0.1``) and help text
(``sampling/spelling.py``) and the package's exports (``from dicecfg import CFG``) all come from
``METHOD_CLASSES``.

Adding a method: a subclass of ``sampling.methods.Method`` in a module of its own (``sampling/apg.py`` is one),
and its line below. This module is data alone (no imports), so ``import dicecfg`` stays fast.
"""

METHOD_CLASSES: dict[str, str] = {  # class name -> the module of the package that defines it, in help order
    "Unguided": "sampling.methods",
    "CFG": "sampling.methods",
    "Scaling": "sampling.methods",
    "Dice": "sampling.methods",
    "AdaptiveGuidance": "sampling.methods",
    "APG": "sampling.apg",
}
