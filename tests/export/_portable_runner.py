"""Runs an exported SavedModel in a process that imports ONLY TensorFlow (never karpalign, keras or tf_text).

    python _portable_runner.py SAVED_MODEL_DIR INPUTS.pkl OUTPUTS.pkl

INPUTS.pkl holds {call name: (signature name, {input alias: numpy array})}. Every call runs twice: first the way
TF Serving's C++ loader runs it (``tf.compat.v1.saved_model.loader.load`` into a fresh session, variables restored
by the graph's saver, one ``Session.run`` feeding the signature's input tensor names and fetching its output tensor
names), then through TF2's object graph (``tf.saved_model.load``). OUTPUTS.pkl receives
{"session_outputs": {call name: {output alias: numpy array}} (or {"error": message}),
"outputs": {call name: {output alias: numpy array}} (TF2), "signatures": {name: [output aliases]},
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


def session_outputs(saved_model_dir, calls):
    """Each call through a session, as TF Serving runs it; a failing call records its error message."""
    results = {}
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        for call_name, (signature, inputs) in calls.items():
            signature_def = meta_graph.signature_def[signature]
            feeds = {signature_def.inputs[key].name: value for key, value in inputs.items()}
            fetches = {key: info.name for key, info in signature_def.outputs.items()}
            try:
                results[call_name] = session.run(fetches, feed_dict=feeds)
            except tf.errors.OpError as e:
                lines = [line for line in e.message.splitlines() if line.strip() and "Graph execution" not in line]
                results[call_name] = {"error": f"{type(e).__name__}: {lines[0] if lines else e.message}"}
    return results


def main(saved_model_dir, inputs_path, outputs_path):
    with open(inputs_path, "rb") as f:
        calls = pickle.load(f)
    from_session = session_outputs(saved_model_dir, calls)  # before anything TF2 touches the model
    loaded = tf.saved_model.load(saved_model_dir)
    outputs = {}
    for call_name, (signature, inputs) in calls.items():
        fn = loaded.signatures[signature]
        result = fn(**{key: tf.constant(value) for key, value in inputs.items()})
        outputs[call_name] = {key: value.numpy() for key, value in result.items()}
    op_types = graph_op_types(saved_model_dir)
    report = {
        "outputs": outputs,
        "session_outputs": from_session,
        "signatures": {name: sorted(fn.structured_outputs) for name, fn in loaded.signatures.items()},
        "op_types": op_types,
        "unregistered": [op for op in op_types if op_def_registry.get(op) is None],
        "modules": sorted(m for m in ("karpalign", "keras", "tensorflow_text") if m in sys.modules),
    }
    with open(outputs_path, "wb") as f:
        pickle.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
