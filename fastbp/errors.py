"""fastbp's exceptions that more than one layer raises or catches (imports nothing of fastbp)."""


class TrainingError(FloatingPointError):
    """NaN or inf appeared during training; the parameters are those of the last good step."""


class Unsupported(Exception):
    """The engine cannot run a node, divergence or optimizer (the per-node path runs it)."""
