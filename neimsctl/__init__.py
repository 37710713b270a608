"""neimsctl: predict electron-ionization mass spectra from molecular structure.

Layers (lower never imports higher; nothing imports ``cli``):
``io`` -> ``chem`` -> ``nn``/``models``/``data`` -> ``train`` -> ``cli``.
"""

__version__ = "0.1.0"
