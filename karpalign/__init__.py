"""karpalign: deep visual-semantic alignments for generating image descriptions (Karpathy & Fei-Fei, 2015)."""

__version__ = "0.1.0"
