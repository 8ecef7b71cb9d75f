"""The web app (`dice serve`): unguided, CFG and DICE side by side for one prompt and seed, in a browser or
through the named API endpoint ``/compare``. It sits over sampling and evaluation, never over training."""
