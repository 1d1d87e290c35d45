"""Exception types of seqops' bad-argument errors where the torch function they replace raises RuntimeError
(SDPA raises it for every bad shape, dtype and value): each is a RuntimeError, so code written against torch
catches it, and also the ValueError / TypeError that says what kind of mistake it was."""


class InvalidArgumentError(RuntimeError, ValueError):
    """A bad shape, size or value."""


class InvalidDtypeError(RuntimeError, TypeError):
    """A tensor of a dtype the op does not take."""
