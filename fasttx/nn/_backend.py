"""The ``backend`` keyword every fasttx module takes, and how it shows in the module's repr."""

from .. import backends


class BackendMixin:
    """Put first among the bases of a torch.nn subclass: adds the ``backend`` keyword to its
    constructor and, to its repr, the backend (for "auto", also the one that last ran)."""

    _fasttx_op = None  # the op name fasttx.backends records for this module

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends._check_choice(backend)

    def extra_repr(self):
        ran = backends.last_used.get(self._fasttx_op)
        shown = f"backend={self.backend}" + (f" (last ran: {ran})" if self.backend == "auto" and ran else "")
        return f"{super().extra_repr()}, {shown}"
