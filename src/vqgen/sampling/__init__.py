"""Samplers that drive the token transformers: autoregressive decoding with a static KV cache,
logits processors (temperature, top-k, top-p, CogView2's cluster sampling) and classifier-free
guidance."""
from vqgen.sampling.autoregressive import SamplingConfig, generate, generate_naive, row_generators
from vqgen.sampling.clusters import fit_clusters, load_clusters, save_clusters
from vqgen.sampling.processors import (Chain, ClusterTopK, LogitsProcessor, Temperature, TopK, TopP, greedy,
                                       sample_from)

__all__ = ["SamplingConfig", "generate", "generate_naive", "row_generators", "fit_clusters", "load_clusters",
           "save_clusters", "Chain", "ClusterTopK", "LogitsProcessor", "Temperature", "TopK", "TopP", "greedy",
           "sample_from"]
