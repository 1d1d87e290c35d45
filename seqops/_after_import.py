"""Run a callback once a module has been imported, without importing it first.

seqops' FlopCounterMode formulas (seqops.ops.flops) wait for torch.utils.flop_counter this way: importing it
(and Triton with it) cost ~85 ms and ~75 MiB of every `import seqops`, in programs that never count FLOPs.
"""

import importlib.util
import sys
import warnings


def after_import(name, callback):
    """callback() now if module `name` is imported, else right after its import executes it."""
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _Watch(name, callback))


def _run(callback, name):
    try:
        callback()
    except Exception as error:  # the user's import must not fail for seqops' sake
        warnings.warn(f"seqops: {name} was imported, but seqops' set-up after it failed: {error!r}", stacklevel=3)


class _Watch:
    """A meta path finder that finds `name` with the other finders and wraps its loader, once."""

    def __init__(self, name, callback):
        self.name, self.callback, self._finding = name, callback, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self._finding:
            return None
        self._finding = True  # the other finders, not this one again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return spec
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _RunAfterExec(spec.loader, self.callback)
        return spec


class _RunAfterExec:
    """The module's own loader (its other methods too: get_source, get_code, ...), then the callback."""

    def __init__(self, loader, callback):
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run(self._callback, module.__name__)

    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)
