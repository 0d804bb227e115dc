"""Leaf metrics that every stage may use and that import no stage: ``reconstruction`` (PSNR,
SSIM, MS-SSIM), ``fid`` (Fréchet distance with any feature extractor) and ``probe`` (the linear
probe of a saved token transformer). Reports that drive pipelines live above, in ``vqgen.eval``."""
