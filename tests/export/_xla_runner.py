"""Runs caption signatures of a SavedModel through a session in a process that imports ONLY TensorFlow, optionally
with XLA compilation disabled the way TF Serving's model server disables it.

    python _xla_runner.py SAVED_MODEL_DIR INPUTS.pkl OUTPUTS.pkl [--disable-xla]

``tensorflow_model_server`` calls ``tensorflow::DisableXlaCompilation()`` at start unless it is given
``--xla_cpu_compilation_enabled=true``; ``--disable-xla`` calls the same C++ function (through ctypes) before the
model is loaded. INPUTS.pkl holds {call name: (signature name, {input alias: numpy array})}; OUTPUTS.pkl receives
{call name: {output alias: numpy array}}, or {"error": the whole message} for a call that failed.
"""

import ctypes
import os
import pickle
import sys

import tensorflow as tf



def disable_xla_compilation():
    library = ctypes.CDLL(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"))
    library._ZN10tensorflow21DisableXlaCompilationEv()  # tensorflow::DisableXlaCompilation()


def session_outputs(saved_model_dir, calls):
    """Each call as TF Serving makes it: the meta graph in a session, one Session.run on the signature's tensors."""
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
                results[call_name] = {"error": f"{type(e).__name__}: {e.message}"}
    return results


def main(saved_model_dir, inputs_path, outputs_path, *flags):
    if "--disable-xla" in flags:
        disable_xla_compilation()
    with open(inputs_path, "rb") as f:
        calls = pickle.load(f)
    with open(outputs_path, "wb") as f:
        pickle.dump(session_outputs(saved_model_dir, calls), f)


if __name__ == "__main__":
    main(*sys.argv[1:])
