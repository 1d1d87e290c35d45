"""Backward hooks that reach a seqops module through the hook dicts it shares with the torch.nn module it
replaced (seqops.convert).

torch files a module's backward hooks as full or old-style by a flag of the module they were registered on.
A hook registered on the original after the conversion lands in the shared dict, but sets the original's
flag, not the twin's: the twin, with hooks and no flag, would run none of them.
"""

__all__ = ["AdoptsSharedBackwardHooks"]


class AdoptsSharedBackwardHooks:
    """Mixin for the seqops modules: backward hooks without a flag of this module's own came through the shared
    dict, and are run as full backward hooks (``register_full_backward_hook``; ``register_backward_hook`` is
    deprecated, and mixing the two on one module is an error anyway)."""

    def _get_backward_hooks(self):
        if self._is_full_backward_hook is None and self._backward_hooks:
            self._is_full_backward_hook = True
        return super()._get_backward_hooks()
