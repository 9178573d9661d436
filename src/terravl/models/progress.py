"""One rule for the progress bars of model calls (encoding, generating), so every long call behaves alike."""

from __future__ import annotations

import sys

SHOW_ABOVE = 256
"""With ``show=None``, calls on more items than this show a bar (only on a terminal); short calls stay quiet."""


def progress_bar(total: int, show: bool | None, desc: str):
    """A tqdm bar on stderr over ``total`` images: ``show`` True always, False never, None for long calls on a
    terminal. A hidden bar is a no-op, so callers update and close it unconditionally."""
    from tqdm import tqdm  # imported here: keeps `import terravl.models` light for start-up time

    if show is False or (show is None and total <= SHOW_ABOVE):
        disable: bool | None = True
    else:
        disable = None if show is None else False  # None: tqdm shows it only on a terminal
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable)
