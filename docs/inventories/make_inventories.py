"""Write the Sphinx inventories of the Python and PyTorch names these docs link to.

The docs build offline, so intersphinx reads these two small files instead of fetching the
projects' own inventories. Each entry maps a name to its page on docs.python.org or
docs.pytorch.org. To link a new name, add it below and run ``python
docs/inventories/make_inventories.py``; ``tests/test_docs.py`` checks that the files match
this script.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

_PY_FUNCTIONS = "library/functions.html#$"
_PY_EXCEPTIONS = "library/exceptions.html#$"
PYTHON = {
    "py:class": {
        **{
            n: _PY_FUNCTIONS
            for n in (
                "int",
                "float",
                "str",
                "bool",
                "tuple",
                "list",
                "dict",
                "set",
                "frozenset",
                "object",
                "type",
                "range",
                "slice",
            )
        },
        "collections.abc.Callable": "library/collections.abc.html#$",
        "collections.abc.Sequence": "library/collections.abc.html#$",
        "collections.abc.Iterable": "library/collections.abc.html#$",
        "collections.abc.Iterator": "library/collections.abc.html#$",
        "collections.abc.Mapping": "library/collections.abc.html#$",
        "pathlib.Path": "library/pathlib.html#$",
        "os.PathLike": "library/os.html#$",
        "argparse.ArgumentParser": "library/argparse.html#$",
        "typing.Any": "library/typing.html#$",
        "numbers.Real": "library/numbers.html#$",
    },
    "py:exception": {
        n: _PY_EXCEPTIONS
        for n in (
            "Exception",
            "TypeError",
            "ValueError",
            "KeyError",
            "RuntimeError",
            "RuntimeWarning",
            "UserWarning",
            "IndexError",
            "NotImplementedError",
        )
    },
    "py:data": {"None": "library/constants.html#$", "typing.Any": "library/typing.html#$"},
    "py:function": {n: _PY_FUNCTIONS for n in ("len", "isinstance", "print", "float", "int")},
}

_GEN = "generated/$.html#$"
TORCH = {
    "py:class": {
        "torch.Tensor": "tensors.html#$",
        "torch.dtype": "tensor_attributes.html#$",
        "torch.device": "tensor_attributes.html#$",
        "torch.Size": "size.html#$",
        "torch.Generator": _GEN,
        "torch.nn.Module": _GEN,
        "torch.nn.Linear": _GEN,
        "torch.nn.Sequential": _GEN,
        "torch.nn.Parameter": _GEN,
        "torch.optim.Optimizer": "optim.html#$",
        "torch.optim.Adam": _GEN,
        "torch.utils.data.Dataset": "data.html#$",
        "torch.utils.data.DataLoader": "data.html#$",
        "torch.amp.GradScaler": "amp.html#$",
        "torch.autocast": "amp.html#$",
        "torch.distributed.ProcessGroup": "distributed.html#$",
    },
    "py:function": {
        "torch.compile": _GEN,
        "torch.autocast": "amp.html#$",
        "torch.library.custom_op": "library.html#$",
        "torch.library.opcheck": "library.html#$",
        "torch.nn.functional.normalize": _GEN,
        "torch.nn.functional.cross_entropy": _GEN,
        "torch.logsumexp": _GEN,
        "torch.distributed.all_gather": "distributed.html#$",
        "torch.distributed.init_process_group": "distributed.html#$",
        "torch.manual_seed": _GEN,
        "torch.save": _GEN,
        "torch.load": _GEN,
    },
}


def inventory(project: str, version: str, entries: dict[str, dict[str, str]]) -> bytes:
    """The bytes of a Sphinx inventory (format version 2) with ``entries``
    ``{domain:role: {name: uri}}``; ``$`` in a uri stands for the name (written out)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = [
        f"{name} {role} 1 {uri.replace('$', name)} -"
        for role, names in sorted(entries.items())
        for name, uri in sorted(names.items())
    ]
    return header.encode() + zlib.compress(("\n".join(lines) + "\n").encode(), 9)


FILES = {
    "python.inv": ("Python", "3", PYTHON),
    "torch.inv": ("PyTorch", "stable", TORCH),
}

if __name__ == "__main__":
    for name, (project, version, entries) in FILES.items():
        (HERE / name).write_bytes(inventory(project, version, entries))
        print(f"wrote {HERE / name}")
