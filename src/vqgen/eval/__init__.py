"""Evaluation reports that drive whole pipelines (``vqgen eval ...``): they sit above the
pipelines and rerankers they run. Leaf metrics live below, in ``vqgen.metrics``; the exact
``shapes`` evaluator lives with its domain, in ``vqgen.shapes``."""
