"""The ``backend`` every fasttx module takes, how it shows in the repr, and the in-place conversion
of torch.nn modules into their fasttx drop-ins (used by the composite modules and fasttx.patch)."""

import collections

from .. import backends


class BackendMixin:
    """Put first among the bases of a torch.nn subclass that adds no state of its own: adds the
    ``backend`` keyword to its constructor and, to its repr, the backend (for "auto", also the one
    that last ran). Torch submodules the constructor made become fasttx modules in place (same
    parameters, same initialisation draws), and setting ``backend`` sets it on every fasttx
    submodule."""

    _fasttx_op = None  # the op name fasttx.backends records for this module

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        convert(self, backend)
        self.backend = backend

    @property
    def backend(self):
        return self.__dict__["_fasttx_backend"]

    @backend.setter
    def backend(self, name):
        backends._check_choice(name)
        for module in self.modules():
            if isinstance(module, BackendMixin):
                module.__dict__["_fasttx_backend"] = name

    def extra_repr(self):
        ran = backends.last_used.get(self._fasttx_op)
        shown = f"backend={self.backend}" + (f" (last ran: {ran})" if self.backend == "auto" and ran else "")
        return ", ".join(part for part in (super().extra_repr(), shown) if part)


def convert(model, backend):
    """Turn every module inside ``model`` (itself included) whose exact type is a torch.nn module
    with a fasttx drop-in into that drop-in, in place: the objects, and so their parameters,
    buffers, hooks and train/eval mode, stay; only their class changes, and they get ``backend``.
    User subclasses keep their own class. Returns {torch class name: how many were converted}."""
    from . import DROP_INS

    backends._check_choice(backend)
    converted = collections.Counter()
    for module in model.modules():
        drop_in = DROP_INS.get(type(module))
        if drop_in is not None:
            converted[type(module).__name__] += 1
            module.__class__ = drop_in
            module.__dict__["_fasttx_backend"] = backend
    return dict(converted)
