"""Text for conditioning: a BPE tokenizer trained on captions (``bpe``) and frozen pretrained
Hugging Face encoders loaded from a local directory (``encoder``)."""
