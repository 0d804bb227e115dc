"""The ``shapes`` domain: procedural scenes of coloured shapes, their captions, a held-out prompt
suite and an exact evaluator. A domain is one package; a later ``motion/`` (video) sits beside it
with the same modules.

    vocabulary   words, palette, sizes, relations, categories; the scene *spec* and its checks
    captions     spec -> canonical caption, and paraphrases in words training never uses
    wording      many wordings of a spec (synonyms, digits, orders, templates, typos) in a training
                 part and a held-out part; a caption parser back to the spec
    scenes       random specs, layout with gaps, anti-aliased rendering
    suite        the held-out prompt suites: suite, paraphrases, wording hold-out (files in
                 ``vqgen/prompts/``, shipped with the package)
    dataset      ``ShapesDataset`` (records) and ``write_shapes_dataset`` (an image folder)
    evaluator    image + spec -> verdict by classical image analysis (no learned model)
    evaluate     a folder of images scored; a tokenizer's round-trip ceiling
    negatives    one-edit hard negatives of a caption or spec
    rerank_eval  how well a reranker ranks: retrieval, hard negatives, picks judged by the evaluator
    cli          `vqgen data shapes` (added to the data command group)

Lower layers only: the domain imports ``vqgen.data`` (records, image folders) and nothing that
trains or generates. The names below load on first use (``vqgen --help`` does not pay for them).
"""
from vqgen.lazy import lazy_exports

_EXPORTS = {
    "validate_spec": "vqgen.shapes.vocabulary",
    "category_of": "vqgen.shapes.vocabulary",
    "caption_of": "vqgen.shapes.captions",
    "render_spec": "vqgen.shapes.scenes",
    "build_suite": "vqgen.shapes.suite",
    "load_suite": "vqgen.shapes.suite",
    "caption_variants": "vqgen.shapes.wording",
    "parse_caption": "vqgen.shapes.wording",
    "ShapesDataset": "vqgen.shapes.dataset",
    "write_shapes_dataset": "vqgen.shapes.dataset",
    "score": "vqgen.shapes.evaluator",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
