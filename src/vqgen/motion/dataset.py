"""The ``motion`` training data: clips rendered on demand, a clip folder of frame strips, its reader.

Storage: an image folder (``metadata.jsonl`` + one PNG per clip, written by
:func:`vqgen.data.folder.write_image_folder`) whose PNGs are **frame strips**, the frames of a
clip left to right (width = frames x size), and ``motion.json`` with the clip rate, the frame-rate
set, frame count, size and seed. Why strips and not MP4 or per-frame PNGs: PNG is lossless, so
frames keep the exact palette colours and anti-aliasing the evaluator reads (H.264's 4:2:0 chroma
halves colour resolution, which at 64 px smears every edge, and GIF quantises colours); one file
per clip keeps folders small and each clip whole (a strip cannot lose a frame without its width
showing it); any image tool or data loader that reads an image folder (``vqgen data check``, HF
``imagefolder``) lists it, and PIL alone decodes it. ``--mp4`` adds H.264 previews under ``mp4/``
for people; nothing reads them back. :func:`read_clip` also reads GIF and MP4 clips (generated
ones), :func:`save_video` writes them.

A row of ``metadata.jsonl`` (one clip)::

    {"file_name": "000000.png", "text": caption, "category": "two",
     "spec": {"objects": [...]},                 # what the caption asks (vqgen.motion.vocabulary)
     "frames": 33, "fps": 16, "size": 64,
     "window": [s, e],                           # first and last frame of the action (inclusive)
     "timing": [[s0, e0], ...],                  # each object's action frames
     "frame_rate": 4, "key_frames": [s, ..., e], # the frame-rate rule (vqgen.motion.framerate)
     "states": [[{"entry", "shape", "color", "size", "x0", "y0", "side", "alpha"}, ...], ...]}  # per frame

:class:`MotionDataset` renders the same clips in memory; :class:`MotionFolder` reads a folder,
skipping and counting bad clips (unreadable, truncated, wrong frame count).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from vqgen.errors import VqgenError
from vqgen.motion.captions import caption_of
from vqgen.motion.framerate import BASE_FPS, FRAME_RATES, key_frames
from vqgen.motion.scenes import (CATEGORY_WEIGHTS, DEFAULT_FRAMES, Track, clip_states, layout, render_clip,
                                 sample_spec, sample_timing)
from vqgen.motion.suite import held_out_prompts
from vqgen.motion.vocabulary import CATEGORIES

INFO_NAME = "motion.json"
VIDEO_SUFFIXES = (".gif", ".mp4")
STATE_DECIMALS = 2


@dataclass
class Clip:
    """One clip: ``frames`` (T, H, W, 3) uint8, its caption, its metadata row, and its key."""

    frames: np.ndarray
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass(frozen=True)
class MotionScene:
    """A sampled clip before rendering: caption, category, spec, timing and the objects' tracks."""

    caption: str
    category: str
    spec: dict
    frames: int
    size: int
    window: tuple[int, int]
    timing: list[tuple[int, int]]
    tracks: list[Track]

    def states(self) -> list[list[dict]]:
        """Per frame, every object's state (rounded as stored; frames are drawn from these)."""
        return [[{k: round(v, STATE_DECIMALS) if isinstance(v, float) else v for k, v in st.items()} for st in frame]
                for frame in clip_states(self.tracks, self.frames, self.size)]

    def meta(self, states: list[list[dict]]) -> dict:
        """The metadata row of the clip (without ``file_name`` and ``text``)."""
        rate, keys = key_frames(self.window, self.frames)
        return {"category": self.category, "spec": self.spec, "frames": self.frames, "fps": BASE_FPS,
                "size": self.size, "window": list(self.window), "timing": [list(t) for t in self.timing],
                "frame_rate": rate, "key_frames": keys, "states": states}


class MotionDataset:
    """``num`` procedural clips, rendered on demand; clip ``i`` depends only on ``(seed, i)`` (and
    ``size``, ``frames``). Captions never equal a prompt of the motion suite."""

    def __init__(self, num: int, size: int = 64, seed: int = 0, frames: int = DEFAULT_FRAMES):
        if num < 0:
            raise VqgenError(f"the number of clips must be >= 0, got {num}")
        if not 32 <= size <= 512:
            raise VqgenError(f"motion frame size must be between 32 and 512 pixels, got {size}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise VqgenError(f"the motion seed must be an integer >= 0, got {seed!r}")
        if not 5 <= frames <= 129:
            raise VqgenError(f"frames per clip must be between 5 and 129, got {frames}")
        self.num, self.size, self.seed, self.frames = num, size, seed, frames

    def __len__(self) -> int:
        return self.num

    def scene(self, index: int) -> MotionScene:
        """Sample clip ``index`` (no rendering)."""
        if not 0 <= index < self.num:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        weights = np.array([CATEGORY_WEIGHTS[c] for c in CATEGORIES])
        held_out = held_out_prompts()
        while True:
            category = CATEGORIES[rng.choice(len(CATEGORIES), p=weights / weights.sum())]
            spec = sample_spec(rng, category)
            caption = caption_of(spec)
            if caption in held_out:
                continue
            window, timing = sample_timing(rng, len(spec["objects"]), self.frames)
            try:
                tracks = layout(spec, timing, self.size, rng)
            except VqgenError:  # a crowded clip that does not fit: draw another
                continue
            return MotionScene(caption, category, spec, self.frames, self.size, window, timing, tracks)

    def __getitem__(self, index: int) -> Clip:
        s = self.scene(index)
        states = s.states()
        return Clip(frames=render_clip(states, self.size), text=s.caption, meta=s.meta(states),
                    key=f"motion-{self.seed}-{index:06d}")

    def __iter__(self):
        return (self[i] for i in range(self.num))


# ----------------------------------------------------------------------------- strips and files
def as_frames(frames) -> np.ndarray:
    """Frames in any usual form as (T, H, W, 3) uint8: a uint8 array (T, H, W, 3), a float array or
    tensor (T, 3, H, W) or (T, H, W, 3) in [0, 1] (or 0..255), or a list of PIL images / (H, W, 3) arrays."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f)
                           for f in frames])
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().float().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise VqgenError(f"expected frames of shape (T, H, W, 3) or (T, 3, H, W), got {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)  # (T, H, W, 3)
    if arr.shape[-1] != 3:
        raise VqgenError(f"expected RGB frames, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0  # floats in [0, 1], else already 0..255
        arr = np.clip(arr * scale, 0, 255).round()
    return arr.astype(np.uint8)


def to_strip(frames) -> Image.Image:
    """The frames of a clip side by side, left to right: an RGB image (T * W) wide."""
    arr = as_frames(frames)                                   # (T, H, W, 3)
    return Image.fromarray(np.concatenate(list(arr), axis=1))  # (H, T*W, 3)


def from_strip(image: Image.Image, frames: int | None = None) -> np.ndarray:
    """Split a frame strip into (T, H, W, 3) uint8 frames of side H.

    Raises :class:`VqgenError` when the width is not a whole number of square frames, or is not
    ``frames`` of them when ``frames`` is given.
    """
    arr = np.asarray(image.convert("RGB"))  # (H, T*H, 3)
    h, w = arr.shape[:2]
    if w % h or (frames is not None and w != frames * h):
        expected = f"{frames} frames" if frames is not None else "a whole number of square frames"
        raise VqgenError(f"a {w}x{h} strip is not {expected} of side {h}")
    return arr.reshape(h, w // h, h, 3).transpose(1, 0, 2, 3)  # (T, H, H, 3)


def read_clip(path: str | Path, frames: int | None = None) -> np.ndarray:
    """A clip file as (T, H, W, 3) uint8: a frame strip (PNG), an animated GIF or an MP4.

    Raises :class:`VqgenError` for a file that cannot be read or has the wrong frame count.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".mp4":
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path, plugin="pyav"))[..., :3]  # (T, H, W, 3)
        elif path.suffix.lower() == ".gif":
            with Image.open(path) as im:
                arr = _gif_frames(im, frames)
        else:
            with Image.open(path) as im:
                return from_strip(im, frames)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise VqgenError(f"cannot read the clip {path}: {e}") from None
    if frames is not None and len(arr) != frames:
        raise VqgenError(f"{path} has {len(arr)} frames, expected {frames}")
    return arr


def _gif_frames(im: Image.Image, frames: int | None) -> np.ndarray:
    """A GIF's frames (T, H, W, 3). GIF writers merge identical neighbours into one longer frame, so
    each is repeated by its duration over one frame's (the total over ``frames``, else the shortest)."""
    images, durations = [], []
    for i in range(getattr(im, "n_frames", 1)):
        im.seek(i)
        images.append(np.asarray(im.convert("RGB")))
        durations.append(max(int(im.info.get("duration") or 0), 1))
    unit = sum(durations) / frames if frames else min(durations)
    repeats = [max(round(d / unit), 1) for d in durations]
    return np.stack([f for f, r in zip(images, repeats) for _ in range(r)])  # (T, H, W, 3)


def save_video(frames, path: str | Path, fps: float = BASE_FPS) -> Path:
    """Write a clip as an animated GIF (PIL) or an MP4 (H.264 via PyAV), chosen by the suffix."""
    arr, path = as_frames(frames), Path(path)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in arr]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif path.suffix.lower() == ".mp4":
        import imageio.v3 as iio

        h, w = arr.shape[1:3]
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # (T, H', W', 3) even sides for 4:2:0
        iio.imwrite(path, arr, plugin="pyav", codec="libx264", fps=fps)
    else:
        raise VqgenError(f"cannot write {path}: a video is a .gif or an .mp4")
    return path


def write_clip_folder(clips: Iterable[Clip], out_dir: str | Path, info: dict | None = None,
                      progress: bool = True) -> int:
    """Write clips as a clip folder (frame strips + ``metadata.jsonl`` with each clip's ``meta``,
    plus ``motion.json`` = ``info``); returns the count. Built beside ``out_dir`` and moved into
    place when complete, like every image folder."""
    from vqgen.data.folder import write_image_folder
    from vqgen.io import atomic_write_json

    written = write_image_folder(_Records(clips if hasattr(clips, "__len__") else list(clips)), out_dir,
                                 progress=progress)
    atomic_write_json(Path(out_dir) / INFO_NAME, info or {})
    return written


class _Records:
    """Clips seen as image records whose image is the frame strip (keeps ``len`` for progress bars)."""

    def __init__(self, clips: Iterable[Clip]):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        from vqgen.data.records import Record

        for c in self.clips:
            yield Record(image=to_strip(c.frames), text=c.text, meta=c.meta, key=c.key)


def write_motion_dataset(out_dir: str | Path, num: int, size: int = 64, seed: int = 0,
                         frames: int = DEFAULT_FRAMES, progress: bool = True, mp4: bool = False) -> dict:
    """Render ``num`` clips into a clip folder (and H.264 previews under ``mp4/`` with ``mp4``).

    Returns stats: ``out_dir``, ``num``, ``size``, ``seed``, ``frames``, ``fps``, ``frame_rates``,
    per-category counts, clips per chosen frame rate, distinct captions.
    """
    data = MotionDataset(num, size, seed, frames)
    info = {"fps": BASE_FPS, "frames": frames, "frame_rates": list(FRAME_RATES), "size": size, "seed": seed,
            "num": num}
    write_clip_folder(data, out_dir, info, progress=progress)
    rows = [json.loads(line) for line in (Path(out_dir) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    if mp4:
        (Path(out_dir) / "mp4").mkdir(exist_ok=True)
        for row in rows:
            save_video(read_clip(Path(out_dir) / row["file_name"]), Path(out_dir) / "mp4" /
                       Path(row["file_name"]).with_suffix(".mp4").name)
    return {"out_dir": str(out_dir), "num": len(rows), "size": size, "seed": seed, "frames": frames,
            "fps": BASE_FPS, "frame_rates": list(FRAME_RATES),
            "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
            "clips_per_frame_rate": {str(k): v for k, v in sorted(Counter(r["frame_rate"] for r in rows).items())},
            "distinct_captions": len({r["text"] for r in rows})}


class MotionFolder:
    """The clips of a clip folder. Rows and files are checked when it is built (by
    :class:`vqgen.data.folder.ImageFolder`, then each strip's frame count against the row's
    ``frames``); bad clips are skipped and counted in ``skipped`` by reason (``missing_file``,
    ``corrupt``, ``truncated``, ``bad_metadata``, ``wrong_frame_count``, ...), with
    ``(key, reason, detail)`` in ``problems``. ``clip[i]`` decodes clip ``i``."""

    def __init__(self, root: str | Path, progress: bool = False):
        from vqgen.data.folder import ImageFolder

        self.root = Path(root)
        self.images = ImageFolder(self.root, progress=progress)
        self.skipped: Counter = Counter(self.images.skipped)
        self.problems = list(self.images.problems)
        info = self.root / INFO_NAME
        self.info = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
        self._keep = []
        for i in range(len(self.images)):
            rec = self.images[i]
            try:
                self._frames_of(rec.image, rec.meta)
                self._keep.append(i)
            except VqgenError as e:
                self.skipped["wrong_frame_count"] += 1
                self.problems.append((rec.key, "wrong_frame_count", str(e)))

    @staticmethod
    def _frames_of(image: Image.Image, meta: dict) -> np.ndarray:
        count = meta.get("frames")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise VqgenError(f"'frames' is {count!r}, not a positive integer")
        return from_strip(image, count)

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, index: int) -> Clip:
        rec = self.images[self._keep[index]]
        return Clip(frames=self._frames_of(rec.image, rec.meta), text=rec.text, meta=rec.meta, key=rec.key)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
