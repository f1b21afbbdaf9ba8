"""Signature metadata shared by the server and the client.

A SavedModel's `saved_model.pb` holds, per meta graph, a map of named `SignatureDef`s: for every input
and output alias a `TensorInfo` with dtype and (possibly partially known) shape. TF Serving answers
GetModelMetadata with exactly that map, and validates Predict requests against it. We read it straight
from `saved_model.pb` (rather than reconstructing it from the loaded Python object) so the development
server returns the same bytes TF Serving would.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

SERVE_TAG = "serve"


def read_signature_defs(saved_model_dir: str, tag: str = SERVE_TAG) -> dict[str, meta_graph_pb2.SignatureDef]:
    """Returns {signature name: SignatureDef} of the meta graph tagged `tag` in `saved_model_dir`.

    Raises ValueError naming the file when `saved_model.pb` is missing, unparsable, or has no meta
    graph with the tag.
    """
    path = os.path.join(saved_model_dir, "saved_model.pb")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read saved_model.pb ({e.strerror or e})") from e
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (a bare Exception subclass) on bad bytes
        raise ValueError(f"{path}: not a SavedModel protobuf ({e})") from e
    for meta_graph in saved_model.meta_graphs:
        if tag in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"{path}: no meta graph tagged {tag!r} (meta graph tags: {tags})")


def dtype_name(dtype_enum: int) -> str:
    """'string', 'float32', ... for a DataType enum value; 'invalid' for DT_INVALID (unset)."""
    if dtype_enum == 0:
        return "invalid"
    return tf.dtypes.as_dtype(dtype_enum).name


def shape_of(tensor_info: meta_graph_pb2.TensorInfo) -> list[int] | None:
    """The TensorInfo's shape as a list with -1 for unknown dimensions, or None for unknown rank."""
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return [d.size for d in tensor_info.tensor_shape.dim]


def format_shape(shape: list[int] | tuple[int, ...] | None) -> str:
    """'[-1, 3]' style text for messages; '<unknown rank>' for None."""
    if shape is None:
        return "<unknown rank>"
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def describe_signature(signature_def: meta_graph_pb2.SignatureDef) -> dict:
    """A plain-dict view of one SignatureDef: method name and {alias: {dtype, shape}} per side."""

    def side(infos) -> dict:
        return {alias: {"dtype": dtype_name(info.dtype), "shape": shape_of(info)}
                for alias, info in sorted(infos.items())}

    return {"method_name": signature_def.method_name,
            "inputs": side(signature_def.inputs),
            "outputs": side(signature_def.outputs)}


def is_internal_signature(name: str) -> bool:
    """True for TF's bookkeeping entries such as `__saved_model_init_op`, which are not callable."""
    return name.startswith("__")
