"""Import-time stand-in for torchvision, for peer benchmarks only.

careamics (through torchmetrics) and topaz import torchvision, but the code paths we benchmark never call
it, and no CPU build of torchvision resolves against the local CPU torch here. Any ``torchvision.x.y``
module is created on demand and any name in it is a placeholder that fails loudly if actually used. Only a
benchmark script ever puts this folder on sys.path; napari-cryoden itself never imports torchvision.
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+stub"


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._name} comes from a torchvision stub and cannot be used")

    def __getattr__(self, attr):
        return _Placeholder(f"{self._name}.{attr}")

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self.__name__}.{attr}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())


def __getattr__(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Placeholder(f"torchvision.{attr}")
