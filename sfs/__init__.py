"""sfs: Stable Diffusion from scratch, the small PyTorch library that the book executes.

One concept per module; each public function cites the book section or equation it implements.
"""

__version__ = "0.1.0"
