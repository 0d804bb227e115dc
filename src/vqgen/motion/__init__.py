"""The ``motion`` domain: procedural clips of shapes doing one action each (move, grow, shrink,
change colour, appear, disappear), their captions, a held-out prompt suite and an exact evaluator
built on the shapes evaluator. Mirrors :mod:`vqgen.shapes` (docs/motion.md):

    vocabulary   actions, categories; the clip *spec* and its checks
    captions     spec -> caption in the shapes vocabulary ("a red circle moves up while ...")
    framerate    the frame-rate rule of multi-frame-rate training (which rate, which 5 key frames)
    scenes       random specs, timing, layout, per-frame states, rendering
    suite        the held-out prompt suite (``vqgen/prompts/motion_suite.jsonl``)
    dataset      ``MotionDataset`` (in memory), clip folders of frame strips (write, read), video files
    evaluator    frames + spec -> verdict (object, action, consistency)
    evaluate     a clip folder scored; any ``generate(prompt, seed)`` scored on the suite
    cli          `vqgen data motion`, `vqgen eval motion`

Lower layers only (``vqgen.shapes``, ``vqgen.data``); the names below load on first use.
"""
from vqgen.lazy import lazy_exports

_EXPORTS = {
    "validate_spec": "vqgen.motion.vocabulary",
    "category_of": "vqgen.motion.vocabulary",
    "caption_of": "vqgen.motion.captions",
    "choose_frame_rate": "vqgen.motion.framerate",
    "key_frames": "vqgen.motion.framerate",
    "FRAME_RATES": "vqgen.motion.framerate",
    "render_spec": "vqgen.motion.scenes",
    "build_suite": "vqgen.motion.suite",
    "load_suite": "vqgen.motion.suite",
    "MotionDataset": "vqgen.motion.dataset",
    "MotionFolder": "vqgen.motion.dataset",
    "write_motion_dataset": "vqgen.motion.dataset",
    "read_clip": "vqgen.motion.dataset",
    "save_video": "vqgen.motion.dataset",
    "score_clip": "vqgen.motion.evaluator",
    "score_folder": "vqgen.motion.evaluate",
    "score_generator": "vqgen.motion.evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
