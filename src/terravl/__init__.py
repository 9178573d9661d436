"""TerraVL: ask questions of satellite and aerial imagery in plain language.

Layers, imported only downwards: ``io`` and ``datasets`` → ``models`` → ``index`` → ``tasks`` → ``cli``/``server``.
"""

__version__ = "0.1.0"
