"""Large embedding tables kept out of the torch export: torch's exporter holds about two more
copies of every weight it serialises (7.2 GB exporting a 2.26 GB BERT whose table is 99 % of
it), so each large table is exported as a few of its rows and written to the graph's folder
afterwards, a block of rows at a time, as the external data of its initializer.

torch and onnx are imported inside these functions, never at module level.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.backends.graph_passes import point_to
from ember.backends.mapped_weights import write_rows
from ember.errors import ModelError

if TYPE_CHECKING:
    import torch

TABLE_BYTES = 256 << 20
"""Embedding tables of this many bytes or more are left out of the export."""


@contextmanager
def tables_left_out(module: torch.nn.Module, *, rows: int) -> Iterator[dict[str, Any]]:
    """While exporting: each `torch.nn.Embedding` of `TABLE_BYTES` or more that no other module
    shares (a tied table also feeds a projection, whose folded weight must be real) holds only
    its first `rows` rows (more than any id the trace looks up). Yields {parameter name: the
    real weight}; the real weights are back in place afterwards."""
    import torch

    uses = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))
    swapped: dict[str, tuple[torch.nn.Embedding, torch.Tensor]] = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, torch.nn.Embedding):
            continue
        weight = sub.weight
        if weight.nbytes < TABLE_BYTES or uses[id(weight)] != 1 or len(weight) <= rows:
            continue
        sub.weight = torch.nn.Parameter(weight.detach()[:rows].clone(), requires_grad=False)
        swapped[f"{name}.weight"] = (sub, weight)
    try:
        yield {name: weight for name, (_, weight) in swapped.items()}
    finally:
        for sub, weight in swapped.values():
            sub.weight = weight


def attach_tables(graph: Path, tables: dict[str, Any]) -> None:
    """Give the exported `graph` the real `tables` (what `tables_left_out` yielded): each
    initializer gets its full shape and its rows in a file of its own beside the graph."""
    import onnx

    if not tables:
        return
    model = onnx.load(str(graph), load_external_data=False)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for index, (name, weight) in enumerate(tables.items()):
        tensor = initializers.get(name)
        if tensor is None:
            raise ModelError(f"ONNX export failed: the graph has no initializer {name!r}")
        array = weight.detach().numpy()
        location = f"table-{index}.bin"
        with (graph.parent / location).open("wb") as out:
            write_rows(out, array, lambda: None)
        del tensor.dims[:]
        tensor.dims.extend(array.shape)
        tensor.ClearField("raw_data")
        point_to(tensor, offset=0, length=array.nbytes, location=location)
    onnx.save_model(model, str(graph))
