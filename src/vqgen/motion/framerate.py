"""The frame-rate rule of multi-frame-rate training (CogVideo): which rate a training clip's key
frames are sampled at, and which frames those are. Both the data side and the video model use it.

Clips are rendered at ``BASE_FPS``; the model's frame-rate token takes one of ``FRAME_RATES``.
A rate ``r`` samples every ``k = BASE_FPS / r``-th frame (its *stride*). The rule (the paper's,
with the text-described part of the clip as "the video"): the rate of a clip is the **lowest rate
of the set at which ``num`` frames still fit inside the action**, i.e. ``(num - 1) * k <= e - s``
for the action's first and last frames ``s`` and ``e``. Lower rates spread the key frames wider,
so the lowest that fits covers as much of the action as the set allows (at least half of it when
rates double); the frames are centred in the action, so every frame shows the action the caption
describes. Motion clips (:mod:`vqgen.motion.scenes`) have actions of exactly ``4 * k`` frames for
a stride of the set, so there the 5 key frames are ``s, s + k, ..., e``: the first shows every
object's start state and the last its end state.

An action shorter than ``num - 1`` frames fits no rate: it gets the highest rate and a window
of ``num`` frames centred on it, moved inside the clip.
"""
from __future__ import annotations

from vqgen.errors import VqgenError

BASE_FPS = 16
FRAME_RATES = (2, 4, 8, 16)   # strides 8, 4, 2, 1 at BASE_FPS
KEY_FRAMES = 5


def stride_of(rate: int, base_fps: int = BASE_FPS) -> int:
    """Frames of the clip between two samples at ``rate`` (``base_fps`` must be a multiple of it)."""
    if rate <= 0 or base_fps % rate:
        raise VqgenError(f"frame rate {rate} does not divide the clip rate {base_fps}")
    return base_fps // rate


def choose_frame_rate(duration: int, base_fps: int = BASE_FPS, rates=FRAME_RATES, num: int = KEY_FRAMES) -> int:
    """The lowest rate of ``rates`` at which ``num`` frames fit in an action of ``duration`` frame
    intervals (``e - s``); the highest rate when none fits."""
    if duration < 0 or num < 2:
        raise VqgenError(f"need a duration >= 0 and num >= 2, got duration={duration}, num={num}")
    ordered = sorted(rates)
    for rate in ordered:
        if (num - 1) * stride_of(rate, base_fps) <= duration:
            return rate
    return ordered[-1]


def key_frames(window: tuple[int, int], frames: int, base_fps: int = BASE_FPS, rates=FRAME_RATES,
               num: int = KEY_FRAMES) -> tuple[int, list[int]]:
    """``(rate, indices)``: the rate of :func:`choose_frame_rate` for the action ``window = (s, e)``
    (inclusive frame indices of a clip of ``frames`` frames) and ``num`` frame indices at that rate,
    centred in the window and inside the clip."""
    s, e = window
    if not 0 <= s <= e < frames:
        raise VqgenError(f"action window {window} is not inside a clip of {frames} frames")
    rate = choose_frame_rate(e - s, base_fps, rates, num)
    k = stride_of(rate, base_fps)
    span = (num - 1) * k
    if span > frames - 1:
        raise VqgenError(f"{num} frames at {rate} fps do not fit in a clip of {frames} frames at {base_fps} fps")
    start = min(max(s + (e - s - span) // 2, 0), frames - 1 - span)
    return rate, [start + i * k for i in range(num)]
