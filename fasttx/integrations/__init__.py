"""fasttx inside other libraries, through the extension points they publish (no per-model code).

- transformers (``hf_transformers.py``): ``"fasttx"`` in its AttentionInterface and
  AttentionMaskInterface, so ``attn_implementation="fasttx"`` works; registered when transformers'
  modules are imported (see ``install_import_hooks``), never importing transformers ourselves.
- ``fasttx.patch`` (``convert_library_modules``): switches transformers models to that attention and
  converts, by exact class, the library modules listed in ``library_modules.py`` (transformers'
  RMSNorm classes, timm's ViT Attention and LayerNorm).
- torch (``torch_flash.py``): ``"fasttx"`` offered to ``torch.nn.attention.activate_flash_attention_impl``
  where torch has it.
"""

import collections
import importlib.abc
import importlib.util
import logging
import sys

logger = logging.getLogger("fasttx")

# module imported by a library -> the function (in this package) that registers fasttx with it.
_AFTER_IMPORT = {
    "transformers.modeling_utils": ("hf_transformers", "register_attention"),
    "transformers.masking_utils": ("hf_transformers", "register_mask"),
}


def _run_hook(module_name):
    submodule, function = _AFTER_IMPORT[module_name]
    try:
        getattr(importlib.import_module(f"{__name__}.{submodule}"), function)()
    except Exception as error:  # a library version we do not fit must not break importing it
        logger.warning("fasttx: could not register with %s: %s: %s", module_name, type(error).__name__, error)


class _LoaderThenHook(importlib.abc.Loader):
    """The module's own loader, then the hook registering fasttx in the freshly executed module."""

    def __init__(self, loader, module_name):
        self._loader, self._module_name = loader, module_name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_hook(self._module_name)

    def __getattr__(self, name):  # get_source, is_package, ... of the wrapped loader
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules in _AFTER_IMPORT it wraps the spec the other finders
    give so that fasttx registers right after the module runs. Importing transformers stays lazy and
    ``import fasttx`` costs one dict lookup per later import."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderThenHook(spec.loader, fullname)
                return spec
        return None


def install_import_hooks():
    """Register fasttx with the libraries already imported, and with the others when they are; offer
    it to torch's flash-attention registry (not activated)."""
    from . import torch_flash

    torch_flash.register()
    for module_name in _AFTER_IMPORT:
        if module_name in sys.modules:
            _run_hook(module_name)
    if not any(isinstance(finder, _AfterImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder())


def convert_library_modules(model, backend):
    """What ``fasttx.patch`` does beyond torch.nn: returns {class name: count} of what it converted."""
    from . import library_modules, hf_transformers

    converted = collections.Counter(hf_transformers.switch_attention(model, backend))
    converted.update(library_modules.convert(model, backend))
    return dict(converted)
