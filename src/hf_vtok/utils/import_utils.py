"""Deferred registration: ``import hf_vtok`` registers with transformers and diffusers without importing them.

Registering a config with ``AutoConfig`` needs ``transformers.models.auto``, which imports torch (seconds). Instead,
:func:`when_imported` waits for the registry module to be imported by whoever uses it, and :class:`DeferredEntries`
then stands in for the registry's dict: it knows the *names* of hf_vtok's entries and imports an entry's classes only
when a lookup asks for that name (or when the registry is listed). This module imports only the standard library.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType


class DeferredEntries(dict):
    """A registry dict (the ``_extra_content`` of a transformers Auto mapping, diffusers' module objects, ...) with
    entries that are registered on first use.

    ``pending`` maps an entry's name to the function that registers it, writing into this dict (directly or through
    the library's own ``register``). The name of a string key is the string; the name of a class key is the class name
    when the class belongs to ``owner`` (so looking up any other class never imports anything).
    """

    def __init__(self, content: dict, pending: dict[str, Callable[[], None]], owner: str):
        super().__init__(content)
        self._pending = dict(pending)
        self._owner = owner

    def _name(self, key) -> str | None:
        if isinstance(key, str):
            return key
        if isinstance(key, type) and key.__module__.partition(".")[0] == self._owner:
            return key.__name__
        return None

    def _register(self, key) -> None:
        register = self._pending.pop(self._name(key), None)  # popped first: a register that looks itself up is fine
        if register is not None:
            register()

    def _register_all(self) -> None:
        while self._pending:
            self._pending.popitem()[1]()

    def __contains__(self, key) -> bool:
        self._register(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self._register(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):
        self._register_all()
        return super().__iter__()

    def __len__(self) -> int:
        self._register_all()
        return super().__len__()

    def keys(self):
        self._register_all()
        return super().keys()

    def values(self):
        self._register_all()
        return super().values()

    def items(self):
        self._register_all()
        return super().items()


class _RunAfterExec:  # the importlib Loader protocol (importlib.abc costs 30 ms to import)
    """Wraps a module's loader to run hooks once the module has executed; the module keeps its real loader."""

    def __init__(self, loader, hooks: dict[str, list[Callable[[ModuleType], None]]]):
        self._loader, self._hooks = loader, hooks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        module = sys.modules[module.__name__]  # a lazy package (diffusers) replaces itself there
        for hook in self._hooks.pop(module.__name__, ()):
            hook(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportHooks:  # the importlib MetaPathFinder protocol
    """Finds nothing itself: it wraps the loader that the other finders return for a watched module."""

    def __init__(self):
        self.hooks: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.hooks:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        # the hooks stay registered until the module executes: ``importlib.util.find_spec`` alone imports nothing
        if spec.loader is not None:
            spec.loader = _RunAfterExec(spec.loader, self.hooks)
        return spec


def when_imported(module_name: str, hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` once ``module_name`` has been imported: now if it already is, else right after."""
    module = sys.modules.get(module_name)
    if module is not None:
        hook(module)
        return
    finder = next((finder for finder in sys.meta_path if isinstance(finder, _PostImportHooks)), None)
    if finder is None:
        finder = _PostImportHooks()
        sys.meta_path.insert(0, finder)
    finder.hooks.setdefault(module_name, []).append(hook)
