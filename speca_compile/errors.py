"""Error types raised by speca-compile.

One base class so callers can catch everything we raise deliberately, and
subclasses that say which stage failed (options, graph analysis, runtime).
"""


class SpecaError(Exception):
    """Base class of every error speca-compile raises on purpose."""


class OptionsError(SpecaError, ValueError):
    """An option key or value is invalid; the message lists what is valid."""


class GraphAnalysisError(SpecaError):
    """The Dynamo graph could not be analysed the way the options ask."""


class LoweringError(SpecaError):
    """A segment could not be exported or built for the requested lowering;
    the message names the segment (and the op or input, where known)."""


class MissingExtraError(SpecaError, ImportError):
    """A lowering needs a package that is not installed; the message names the pip extra."""


class BundleError(SpecaError):
    """An engine bundle could not be written or loaded; the message names the file,
    the manifest field or the input, and what was expected."""
