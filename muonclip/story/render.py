"""Writing figures and animations to disk, with provenance in the files' metadata."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.animation import Animation, PillowWriter
from matplotlib.figure import Figure
from PIL import Image

from ..io import atomic_write_bytes

__all__ = ["save_figure", "save_animation", "ProvenanceGifWriter", "provenance_lines"]


def provenance_lines(obj) -> list[str]:
    fig = obj if isinstance(obj, Figure) else getattr(obj, "_fig", None)
    return list(getattr(fig, "_story_provenance", []) or [])


def save_figure(fig: Figure, path: str | Path, *, description: str = "", dpi: int = 100) -> Path:
    """Save a PNG whose text chunks carry the provenance ("Source") and a description."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Software": "muonclip story", "Source": " || ".join(provenance_lines(fig))}
    if description:
        meta["Description"] = description
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=meta)
    atomic_write_bytes(path, buffer.getvalue())  # a kill mid-write must not leave a truncated PNG
    return path


class ProvenanceGifWriter(PillowWriter):
    """Pillow GIF writer that stores a comment (the provenance) in the file."""

    def __init__(self, *args, comment: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.comment = comment

    def grab_frame(self, **savefig_kwargs) -> None:
        """One draw per frame, straight from the Agg buffer."""
        canvas = self.fig.canvas
        canvas.draw()
        im = Image.frombuffer("RGBA", canvas.get_width_height(), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
        self._frames.append(im.convert("RGB"))

    def finish(self) -> None:
        self._frames[0].save(self.outfile, save_all=True, append_images=self._frames[1:],
                             duration=int(1000 / self.fps), loop=0, comment=self.comment.encode("utf-8"))


def save_animation(anim: Animation, path: str | Path, *, fps: int = 6, dpi: int | None = None) -> Path:
    """Write ``anim`` as an animated GIF (PillowWriter) with the provenance as GIF comment.

    Animations from :mod:`muonclip.viz.animate` are drawn once per frame (``Animation.save``
    draws each frame three times); any other Animation goes through ``Animation.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = getattr(anim, "story_fig", None) or getattr(anim, "_fig", None)
    comment = " || ".join(provenance_lines(fig) if fig is not None else [])
    writer = ProvenanceGifWriter(fps=fps, comment=comment)
    update = getattr(anim, "story_update", None)
    if update is None:
        anim.save(str(path), writer=writer, dpi=dpi)
        return path
    with writer.saving(fig, str(path), dpi or fig.dpi):
        for frame in range(anim.story_frames):
            update(frame)
            writer.grab_frame()
    # The animation was rendered by hand: tell matplotlib not to warn that it never ran.
    anim._draw_was_started = True
    return path
