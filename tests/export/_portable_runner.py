"""Runs an exported SavedModel in a process that imports ONLY TensorFlow (never karpalign, keras or tf_text).

    python _portable_runner.py SAVED_MODEL_DIR INPUTS.pkl OUTPUTS.pkl

INPUTS.pkl holds {call name: (signature name, {input alias: numpy array})}. OUTPUTS.pkl receives
{"outputs": {call name: {output alias: numpy array}}, "signatures": {name: [output aliases]},
"op_types": sorted op types of the graph and all its functions, "unregistered": op types this plain TensorFlow
does not know, "modules": which of karpalign / keras / tensorflow_text got imported}.
"""

import pickle
import sys

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry


def graph_op_types(saved_model_dir):
    proto = saved_model_pb2.SavedModel()
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(ops)


def main(saved_model_dir, inputs_path, outputs_path):
    with open(inputs_path, "rb") as f:
        calls = pickle.load(f)
    loaded = tf.saved_model.load(saved_model_dir)
    outputs = {}
    for call_name, (signature, inputs) in calls.items():
        fn = loaded.signatures[signature]
        result = fn(**{key: tf.constant(value) for key, value in inputs.items()})
        outputs[call_name] = {key: value.numpy() for key, value in result.items()}
    op_types = graph_op_types(saved_model_dir)
    report = {
        "outputs": outputs,
        "signatures": {name: sorted(fn.structured_outputs) for name, fn in loaded.signatures.items()},
        "op_types": op_types,
        "unregistered": [op for op in op_types if op_def_registry.get(op) is None],
        "modules": sorted(m for m in ("karpalign", "keras", "tensorflow_text") if m in sys.modules),
    }
    with open(outputs_path, "wb") as f:
        pickle.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
