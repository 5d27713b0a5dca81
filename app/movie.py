"""MP4 movies of the 3D view: canvas frames streamed to ffmpeg (imageio-ffmpeg's own binary).

`MovieRecorder` writes into a hidden file beside the target and moves it onto the
target when the recording ends, like every sdglass output: an existing file is kept
unless overwriting was asked for, and a failed recording leaves the target untouched.
Frames go to ffmpeg from a thread of their own: a frame waiting for the encoder never
holds up the window. `CanvasFilm` takes the frames from the canvas's own draws (read
back after each, no second render).
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from qtpy.QtCore import QTimer
from vispy.gloo import read_pixels

from core.errors import FileFormatError, OutputExistsError
from core.io import check_output

#: Frames per second of a movie: the canvas is read back at most this often (~12 ms at
#: 850 x 650 pixels with software OpenGL), and the movie plays its frames at this rate.
MOVIE_FPS = 10
#: H.264 frame sides are multiples of this (ffmpeg's macro blocks): a canvas is cropped
#: to it, at most 15 pixels from its right and bottom edges.
BLOCK = 16
#: Frames that may wait for the encoder; a frame arriving when they are all taken is
#: dropped (counted in `dropped`): the movie skips it, the window does not wait.
QUEUE_FRAMES = 2 * MOVIE_FPS
#: ffmpeg's output options: one thread and a fast preset, so that encoding takes little
#: of the CPU the dynamics runs on; constant quality.
FFMPEG_OPTIONS = ["-threads", "1", "-preset", "ultrafast", "-crf", "23"]
#: Height of a frame's caption text (pixels), written in its bottom-left corner.
CAPTION_PX = 20


def captioned(frame: np.ndarray, caption: str) -> np.ndarray:
    """The frame with `caption` written in white, outlined in black, at its bottom left
    (into the frame, not onto the canvas: a changed canvas text costs a second draw)."""
    image = Image.fromarray(frame)
    font = ImageFont.load_default(size=CAPTION_PX)
    ImageDraw.Draw(image).text(
        (CAPTION_PX // 2, frame.shape[0] - 1.6 * CAPTION_PX), caption, font=font,
        fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0),
    )  # fmt: skip
    return np.asarray(image)


class MovieRecorder:
    """Frames (H, W, 3 or 4, uint8) in, an H.264 MP4 at `fps` out. The first frame sets the
    size; later frames of another size (a resized window) are cropped or padded with black
    to it. ffmpeg runs in its own process."""

    def __init__(self, path: str | Path, force: bool = False, fps: int = MOVIE_FPS) -> None:
        self.target = check_output(path, force)
        self.force, self.fps = force, fps
        self.tmp = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.part.mp4")
        self.size: tuple[int, int] | None = None  # (height, width)
        self.frames = 0  # encoded
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, image: np.ndarray, caption: str = "") -> None:
        """Queue one frame, with a caption to write on it, for the encoder (raises what made
        encoding fail)."""
        if self._error is not None:
            raise FileFormatError(f"encoding {self.target.name} failed: {self._error}")
        rgb = np.asarray(image)[..., :3]
        if self.size is None:
            self._start(rgb.shape[:2])
        frame = np.zeros((*self.size, 3), np.uint8)
        h, w = min(self.size[0], rgb.shape[0]), min(self.size[1], rgb.shape[1])
        frame[:h, :w] = rgb[:h, :w]
        try:
            self._queue.put_nowait((frame, caption))
        except queue.Full:
            self.dropped += 1

    def _start(self, shape: tuple[int, int]) -> None:
        height, width = (side - side % BLOCK for side in shape)
        if height < BLOCK or width < BLOCK:
            raise FileFormatError(f"a movie frame must be at least {BLOCK} pixels a side")
        self.size = (height, width)
        writer = imageio_ffmpeg.write_frames(
            str(self.tmp), (width, height), fps=self.fps, codec="libx264",
            macro_block_size=1, ffmpeg_log_level="error", output_params=FFMPEG_OPTIONS,
        )  # fmt: skip
        writer.send(None)  # starts ffmpeg
        self._thread = threading.Thread(target=self._encode, args=(writer,), daemon=True)
        self._thread.start()

    def _encode(self, writer) -> None:
        """Thread: frames to ffmpeg until None; the writer closes either way."""
        try:
            while (item := self._queue.get()) is not None:
                frame, caption = item
                writer.send(captioned(frame, caption) if caption else frame)
                self.frames += 1
        except BaseException as err:  # reported by add() and finish()
            self._error = err
            while self._queue.get() is not None:  # the rest is drained unsent
                pass
        finally:
            try:
                writer.close()
            except BaseException as err:
                self._error = self._error or err

    def _end(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self) -> Path:
        """End the movie and move it onto the target; without a frame nothing is written."""
        self._end()
        if self._error is not None or not self.frames:
            self.tmp.unlink(missing_ok=True)
            why = f"encoding failed: {self._error}" if self._error else "no frame was recorded"
            raise FileFormatError(f"{why}: {self.target} not written")
        if self.target.exists() and not self.force:  # created by someone else meanwhile
            self.tmp.unlink(missing_ok=True)
            raise OutputExistsError(self.target)
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial movie (the target is untouched)."""
        self._end()
        self.tmp.unlink(missing_ok=True)


class CanvasFilm:
    """Films a napari viewer's 3D canvas into a MovieRecorder: after a canvas draw, at most
    the recorder's fps times a second, the drawn frame is read back (the canvas draws
    anyway when the scene changes; a second render would double the drawing) with
    caption() written on it. A failure ends the filming and reaches on_error (in a later
    event-loop turn)."""

    def __init__(self, viewer, recorder: MovieRecorder, caption, on_error) -> None:
        self.recorder, self.caption, self.on_error = recorder, caption, on_error
        self.canvas = viewer.window._qt_viewer.canvas._scene_canvas  # napari's vispy canvas
        self._next = 0.0
        self.canvas.events.draw.connect(self._grab, position="last")
        self.canvas.update()  # the first frame: the view as it is

    def _grab(self, event) -> None:
        now, period = time.monotonic(), 1.0 / self.recorder.fps
        if now < self._next:
            return
        # fps frames a second on average, also where draws come at another rate: a draw
        # late for its slot does not push the later slots back
        self._next = max(self._next + period, now - period)
        try:
            self.recorder.add(read_pixels(alpha=False), self.caption())
        except Exception as err:
            self._stop()
            QTimer.singleShot(0, lambda error=err: self.on_error(error))

    def _stop(self) -> None:
        if self._grab in self.canvas.events.draw.callbacks:
            self.canvas.events.draw.disconnect(self._grab)

    def finish(self) -> Path:
        """Stop filming; the movie goes onto its target."""
        self._stop()
        return self.recorder.finish()

    def abort(self) -> None:
        self._stop()
        self.recorder.abort()
