"""dicecfg: distil classifier-free guidance into a text-embedding sharpener (DICE)."""

__version__ = "0.1.0"
