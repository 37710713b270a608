"""neimsctl: predict electron-ionization mass spectra from molecular structure.

Layers (lower never imports higher; nothing imports ``cli`` or ``api``; tools/check_layers.py):
``io`` -> ``chem`` -> ``nn``/``models``/``data`` -> ``predict``/``evaluate`` -> ``train`` ->
``cli``/``api``.
"""

__version__ = "0.1.0"

__all__ = ["SpectrumPredictor", "__version__"]


def __getattr__(name: str) -> object:
    """Lazy exports: ``from neimsctl import SpectrumPredictor`` imports torch only when asked."""
    if name == "SpectrumPredictor":
        from neimsctl.api import SpectrumPredictor

        return SpectrumPredictor
    raise AttributeError(f"module 'neimsctl' has no attribute {name!r}")
