"""Samplers that drive the token transformers: the one settings type (:class:`SamplingConfig`),
autoregressive decoding with a static KV cache and its full-recompute reference, logits
processors (temperature, top-k, top-p, CogView2's cluster sampling) and classifier-free guidance.
Speculative Jacobi decoding (``sjd``) writes a window of codes per pass from the same
distribution. Pipelines pick a decoder by name (``vqgen.pipelines.base.DECODERS``)."""
from vqgen.sampling.autoregressive import (CachedLoop, Picker, Plan, generate, generate_naive, guidance_schedule,
                                           image_generators, make_plan, row_generators)
from vqgen.sampling.clusters import fit_clusters, load_clusters, save_clusters
from vqgen.sampling.processors import (Chain, ClusterTopK, LogitsProcessor, Temperature, TopK, TopP, greedy,
                                       sample_from)
from vqgen.sampling.settings import SamplingConfig, check_guidance
from vqgen.sampling.sjd import SJDStats, generate_sjd

__all__ = ["SamplingConfig", "check_guidance", "generate", "generate_naive", "generate_sjd", "SJDStats", "row_generators", "image_generators", "make_plan", "Plan",
           "Picker", "CachedLoop", "guidance_schedule", "fit_clusters", "load_clusters", "save_clusters", "Chain",
           "ClusterTopK", "LogitsProcessor", "Temperature", "TopK", "TopP", "greedy", "sample_from"]
