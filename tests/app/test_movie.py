"""app.movie: MP4 files of frames, written atomically, with captions and a bounded queue."""

import threading

import imageio_ffmpeg
import numpy as np
import pytest

import app.movie as movie_module
from app.movie import BLOCK, MovieRecorder, captioned
from core.errors import FileFormatError, OutputExistsError


def read_movie(path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader]
    return meta, frames


def frame(value: int, shape=(70, 90)) -> np.ndarray:
    image = np.zeros((*shape, 4), np.uint8)  # RGBA, as the canvas gives it
    image[..., :3] = value
    return image


def test_frames_become_an_h264_movie_cropped_to_whole_blocks(tmp_path):
    recorder = MovieRecorder(tmp_path / "m.mp4", fps=5)
    for value in (0, 120, 240):
        recorder.add(frame(value))
    recorder.add(frame(60, shape=(40, 200)))  # a resized window: padded / cropped
    assert recorder.finish() == tmp_path / "m.mp4"
    meta, frames = read_movie(tmp_path / "m.mp4")
    assert meta["codec"] == "h264" and meta["fps"] == 5
    assert meta["size"] == (90 - 90 % BLOCK, 70 - 70 % BLOCK) == (80, 64)
    assert recorder.frames == len(frames) == 4
    means = [f.mean() for f in frames[:3]]
    assert means == pytest.approx([0, 120, 240], abs=3)  # lossy, but the frames in order
    last = frames[3]
    assert last[:32].mean() == pytest.approx(60, abs=3) and last[44:].mean() < 3  # black pad
    assert [p.name for p in tmp_path.iterdir()] == ["m.mp4"]


def test_a_caption_is_written_at_the_bottom_left():
    image = np.zeros((120, 300, 3), np.uint8)
    out = captioned(image, "t = 12.34 (1/gamma t0)")
    written = np.argwhere(out.max(axis=2) > 200)
    assert len(written) > 50 and image.max() == 0  # the input is kept
    assert written[:, 0].min() > 120 // 2 and written[:, 1].max() < 300 * 0.9


def test_an_existing_movie_is_kept_and_nothing_is_left_behind(tmp_path):
    target = tmp_path / "m.mp4"
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        MovieRecorder(target)
    recorder = MovieRecorder(tmp_path / "n.mp4")
    recorder.add(frame(100))
    recorder.abort()
    with pytest.raises(FileFormatError, match="no frame was recorded"):
        MovieRecorder(tmp_path / "o.mp4").finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mp4"]
    assert target.read_bytes() == b"keep"


def test_frames_the_encoder_cannot_take_in_time_are_dropped_not_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(movie_module, "QUEUE_FRAMES", 2)
    recorder = MovieRecorder(tmp_path / "m.mp4")
    release = threading.Event()
    send = movie_module.captioned

    def slow(image, caption):  # the encoder thread waits here
        release.wait(10)
        return send(image, caption)

    monkeypatch.setattr(movie_module, "captioned", slow)
    for value in range(6):
        recorder.add(frame(value * 40), caption="t")
    release.set()
    recorder.finish()
    assert recorder.dropped >= 3 and recorder.frames + recorder.dropped == 6
    assert len(read_movie(tmp_path / "m.mp4")[1]) == recorder.frames


def test_frames_too_small_for_a_block_are_refused(tmp_path):
    with pytest.raises(FileFormatError, match="at least 16 pixels"):
        MovieRecorder(tmp_path / "m.mp4").add(frame(0, shape=(10, 90)))
