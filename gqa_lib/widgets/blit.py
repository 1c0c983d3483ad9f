"""Fast redraws for the widgets' figures: draw what stays once, then only what changes ("blitting").

Most of matplotlib's drawing time goes to text and axis layout (tick labels, legends, colour bars),
which change rarely while a reader moves a slider. ``BlitFigure`` keeps rendered backgrounds (the
figure without its changing artists), keyed by whatever decides how the background looks (axis
limits, tick labels); an update pastes the background for its key and draws only the changing
artists on top. A background is rendered the first time its key is seen, and the last few are kept.
Every widget that blits does it through ``BlitFigure``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import matplotlib as mpl
import numpy as np

BACKGROUNDS_KEPT = 8  # backgrounds kept per figure: one bitmap of the whole figure each (1 to 2 MB at our sizes)


class BlitFigure:
    """Render ``fig`` to PNG, redrawing only ``dynamic`` artists over a kept background.

    ``render(key)``: ``key`` must change whenever anything outside ``dynamic`` changes (limits,
    ticks, static labels); the caller makes sure of that. A new key's background is a full draw
    of the figure without the ``dynamic`` artists.

    ``keyed``: when only these artists change with the key and the rest of the figure never does,
    the rest is drawn once, and a new key's background is that drawing with the ``keyed`` artists
    drawn over it (much less work than a full draw; notebook 04's explorer: its diagram and head
    numbers change with the layout, its colour bars and titles never).

    ``kept``: how many backgrounds are kept (the most recently used). ``rc``: matplotlib settings
    that all the drawing is done under (for example ``{"text.hinting": "none"}``).
    """

    def __init__(self, fig, dynamic, keyed=(), kept: int = BACKGROUNDS_KEPT, rc: dict | None = None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig = fig
        self.canvas = FigureCanvasAgg(fig)
        self.dynamic = list(dynamic)
        self.keyed = list(keyed)
        self.rc = dict(rc or {})
        for artist in self.dynamic + self.keyed:
            artist.set_animated(True)  # left out of the full draw; drawn over the background
        self._base = None  # with ``keyed``: the figure drawn once without the keyed and dynamic artists
        # A well-kept standard-library cache instead of our own LRU: key -> background bitmap, the last
        # ``kept`` keys. Made per figure, so it goes with the figure; ``background.cache_clear()`` empties it.
        self.background = functools.lru_cache(maxsize=kept)(self._draw_background)

    def _draw_background(self, key):
        """Draw the background for ``key`` (the figure without the dynamic artists); return its bitmap."""
        if not self.keyed:
            self.canvas.draw()
        elif self._base is None:
            self.canvas.draw()
            self._base = self.canvas.copy_from_bbox(self.fig.bbox)
        else:
            self.canvas.restore_region(self._base)
        for artist in self.keyed:
            self.fig.draw_artist(artist)
        return self.canvas.copy_from_bbox(self.fig.bbox)

    def render(self, key) -> bytes:
        """PNG bytes of the figure as it is now."""
        from PIL import Image

        settings = mpl.rc_context(self.rc) if self.rc else contextlib.nullcontext()
        with warnings.catch_warnings(), settings:  # a typed emoji has no glyph in the default font; drawing goes on
            warnings.simplefilter("ignore", UserWarning)
            self.canvas.restore_region(self.background(key))  # a new key's background is already on the canvas
            for artist in self.dynamic:
                if artist.get_visible():
                    self.fig.draw_artist(artist)
        buf = io.BytesIO()
        rgb = np.asarray(self.canvas.buffer_rgba())[..., :3]  # (height, width, 3)
        Image.fromarray(rgb).save(buf, format="png", compress_level=1)  # fast to write, still small
        return buf.getvalue()
