"""Fast redraws for the widgets' figures: draw what stays once, then only what changes ("blitting").

Most of matplotlib's drawing time goes to text and axis layout (tick labels, legends, colour bars),
which change rarely while a reader moves a slider. ``BlitFigure`` keeps rendered backgrounds (the
figure without its changing artists), keyed by whatever decides how the background looks (axis
limits, tick labels); an update pastes the background for its key and draws only the changing
artists on top. A background is rendered in full the first time its key is seen, and a few are kept.
"""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict

import numpy as np

BACKGROUNDS_KEPT = 8


class BlitFigure:
    """Render ``fig`` to PNG, redrawing only ``dynamic`` artists over a cached background.

    ``render(key)``: ``key`` must change whenever anything outside ``dynamic`` changes (limits,
    ticks, static labels); the caller makes sure of that.
    """

    def __init__(self, fig, dynamic):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig = fig
        self.canvas = FigureCanvasAgg(fig)
        self.dynamic = list(dynamic)
        for artist in self.dynamic:
            artist.set_animated(True)  # left out of the full draw; drawn over the background
        self._backgrounds: OrderedDict = OrderedDict()

    def render(self, key) -> bytes:
        """PNG bytes of the figure as it is now."""
        from PIL import Image

        with warnings.catch_warnings():  # a typed emoji has no glyph in the default font; drawing goes on
            warnings.simplefilter("ignore", UserWarning)
            if key in self._backgrounds:
                self._backgrounds.move_to_end(key)
                self.canvas.restore_region(self._backgrounds[key])
            else:
                self.canvas.draw()
                self._backgrounds[key] = self.canvas.copy_from_bbox(self.fig.bbox)
                while len(self._backgrounds) > BACKGROUNDS_KEPT:
                    self._backgrounds.popitem(last=False)
            for artist in self.dynamic:
                if artist.get_visible():
                    self.fig.draw_artist(artist)
        buf = io.BytesIO()
        rgb = np.asarray(self.canvas.buffer_rgba())[..., :3]  # (height, width, 3)
        Image.fromarray(rgb).save(buf, format="png", compress_level=1)  # fast to write, still small
        return buf.getvalue()
