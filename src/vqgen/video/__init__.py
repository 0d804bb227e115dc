"""Text-to-video (CogVideo): a frozen text-to-image unified decoder, a temporal attention channel
per layer for the key frames and another for recursive frame interpolation, their trainer and
sampler. ``model`` (the dual-channel transformer), ``masks`` (the temporal channel's masks),
``sample`` (key frames, then interpolation passes), ``train`` (``vqgen video train``), ``cli``.
"""
