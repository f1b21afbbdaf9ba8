"""The NumPy reference for benchmarks/decode.py: caption decoding the way Karpathy's neuraltalk does it.

A re-implementation (Python 3, NumPy only, never TensorFlow) of what neuraltalk's ``predict`` does per image
(``imagernn/generic_batch_generator.py``, ``rnn_generator.py``, ``lstm_generator.py``), so its speed can be
measured side by side with karpalign's in one run on the same machine:

- float64 weights, one image at a time: the image projection ``x_i = cnn · W_e + b_e`` (4096 -> 512), then
- beam 1 (neuraltalk's separate greedy loop): per step the word vector, the recurrence, the output layer,
  a softmax, ``log(1e-20 + p)`` and an arg-max;
- beam K > 1: per step, for every beam, one tick of the network, the same softmax and log, a full
  ``argsort`` of the vocabulary, its K best words as new candidates, then one Python sort of all candidates.

Word 0 is START and END, as in neuraltalk. Its END bias is set very negative so that no caption ends early:
every caption runs to ``--max-length`` words, as karpalign's benchmark captions do, and both do the same work.
The RNN is the paper's ReLU recurrence with the image fed at the first step; the LSTM is neuraltalk's (image as
the first input, then the words; one (1 + E + H) x 4H weight matrix).

    python benchmarks/_neuraltalk.py --cell rnn --beam 7 --images 5 --repeats 3    # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

END = 0  # neuraltalk: index 0 is both the start and the end token


def make_model(cell: str, V: int, D: int, H: int, E: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def init(n_in, n_out):
        return rng.normal(scale=1.0 / np.sqrt(n_in), size=(n_in, n_out))  # float64, as neuraltalk

    model = {"We": init(D, E), "be": np.zeros((1, E)), "Ws": init(V, E), "Wd": init(H, V), "bd": np.zeros((1, V))}
    model["bd"][0, END] = -1e9  # no caption ends early (see the module docstring)
    if cell == "rnn":
        model.update(Wxh=init(E, H), bxh=np.zeros((1, H)), Whh=init(H, H), bhh=np.zeros((1, H)))
    else:
        model["WLSTM"] = init(1 + E + H, 4 * H)
    return model


def log_probs(y: np.ndarray) -> np.ndarray:
    """neuraltalk's softmax: shift by the max, normalise, back to the log domain with a 1e-20 guard."""
    y = y.ravel()
    e = np.exp(y - np.amax(y))
    return np.log(1e-20 + e / np.sum(e))


def rnn_tick(model, x_image, word, h_prev, first):
    xsh = model["Ws"][word].dot(model["Wxh"]) + model["bxh"]
    pre = xsh + h_prev.dot(model["Whh"]) + model["bhh"]
    h = np.maximum(x_image + pre if first else pre, 0)
    return h.dot(model["Wd"]) + model["bd"], (h,)


def lstm_tick(model, x, h_prev, c_prev):
    WLSTM = model["WLSTM"]
    d = h_prev.size
    hin = np.zeros((1, WLSTM.shape[0]))  # bias unit, x_t, h_{t-1}
    hin[0, 0] = 1
    hin[0, 1:1 + x.size] = x
    hin[0, 1 + x.size:] = h_prev
    ifog = hin.dot(WLSTM)
    gates = 1.0 / (1.0 + np.exp(-ifog[:, :3 * d]))
    cand = np.tanh(ifog[:, 3 * d:])
    c = gates[:, :d] * cand + gates[:, d:2 * d] * c_prev
    h = gates[:, 2 * d:3 * d] * c
    return h.dot(model["Wd"]) + model["bd"], h, c


def predict(model, cell: str, feature: np.ndarray, beam: int, max_length: int):
    """One image -> [(log p, word ids)], best first (neuraltalk's predict for one image)."""
    x_image = feature.dot(model["We"]) + model["be"]  # (1, E)
    H = model["Wd"].shape[0]
    if cell == "rnn":
        state0 = (np.zeros((1, H)),)

        def tick(word, state, first):
            return rnn_tick(model, x_image, word, state[0], first)
    else:
        _, h0, c0 = lstm_tick(model, x_image.ravel(), np.zeros(H), np.zeros(H))  # the image is input 0
        state0 = (h0.ravel(), c0.ravel())

        def tick(word, state, first):
            y, h, c = lstm_tick(model, model["Ws"][word], state[0], state[1])
            return y, (h.ravel(), c.ravel())

    if beam == 1:  # neuraltalk's greedy loop
        word, state, words, total = 0, state0, [], 0.0
        while True:
            y, state = tick(word, state, not words)
            lp = log_probs(y)
            word = int(np.argmax(lp))
            words.append(word)
            total += lp[word]
            if word == END or len(words) >= max_length:
                return [(total, words)]
    beams = [(0.0, [], state0)]
    for _ in range(max_length):
        candidates = []
        for score, words, state in beams:
            if words and words[-1] == END:  # ended: kept as a candidate, not expanded
                candidates.append((score, words, state))
                continue
            y, new_state = tick(words[-1] if words else 0, state, not words)
            lp = log_probs(y)
            order = np.argsort(-lp)
            for i in range(beam):
                candidates.append((score + lp[order[i]], words + [int(order[i])], new_state))
        candidates.sort(key=lambda c: c[0], reverse=True)
        beams = candidates[:beam]
    return [(score, words) for score, words, _ in beams]


def images_per_second(cell: str, beam: int, images: int, repeats: int, V: int, D: int, H: int, E: int,
                      max_length: int) -> dict:
    model = make_model(cell, V, D, H, E)
    features = np.random.default_rng(1).normal(size=(images, 1, D))
    predict(model, cell, features[0], beam, max_length)  # warm-up
    seconds = []
    for _ in range(repeats):
        for f in features:
            start = time.perf_counter()
            out = predict(model, cell, f, beam, max_length)
            seconds.append(time.perf_counter() - start)
            if len(out[0][1]) != max_length:
                raise RuntimeError("a neuraltalk caption ended early: runs not comparable")
    # The fastest image, as karpalign's one-image figure is its fastest call: the least disturbed by other load.
    return {"cell": cell, "beam": beam, "images": len(seconds), "images_per_s": 1.0 / min(seconds),
            "median_images_per_s": 1.0 / float(np.median(seconds))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm"])
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=2500)
    p.add_argument("--feature-dim", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=512)
    p.add_argument("--max-length", type=int, default=20)
    a = p.parse_args(argv)
    print(json.dumps(images_per_second(a.cell, a.beam, a.images, a.repeats, a.vocab, a.feature_dim, a.hidden,
                                       a.word_dim, a.max_length)))


if __name__ == "__main__":
    main()
