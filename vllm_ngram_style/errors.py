"""Error types users see. Each one carries a message that says what to fix.

They subclass ValueError so that vLLM's API server turns them into HTTP 400 when they are raised
from ``validate_params``.
"""


class NgramStyleError(ValueError):
    """Base class of every error this package raises on bad input."""


class StylePackError(NgramStyleError):
    """A style pack is missing, corrupt, of another format version, or built for another tokenizer."""


class CorpusError(NgramStyleError):
    """A corpus path is missing or unreadable, or the corpus holds no usable text."""


class ConfigError(NgramStyleError):
    """Server-side configuration (styles, packs, flags) is malformed."""


class RequestError(NgramStyleError):
    """A request's style arguments are invalid (unknown style, bad strength, unknown key).

    ``key`` names the offending argument (e.g. "style_strength") when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key
