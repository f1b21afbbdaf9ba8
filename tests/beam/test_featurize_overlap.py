"""ExtractFeaturesFn: the CNN runs in a background thread overlapped with the rest of the worker's work, and
still gives the same outputs, in order, in their own windows, with culprits isolated as dead letters."""

import dataclasses
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CROP = 8
POISON = 255  # an image whose pixels are all 255 makes the fake backbone raise


class FakeBackbone:
    """Features = per-crop mean of each channel (N, 3); raises on a poisoned crop; records its threads and
    can be held (``gate``) to prove the DoFn does not wait for it."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.threads = set()
        self.calls = 0

    def preprocess(self, crops, size):
        assert crops.shape[1:3] == size
        return np.asarray(crops, np.float32)

    def __call__(self, x):
        self.threads.add(threading.current_thread().name)
        self.calls += 1
        assert self.gate.wait(timeout=30), "test gate never opened"
        if (x >= POISON).all(axis=(1, 2, 3)).any():
            raise ValueError("poisoned crop")
        return x.mean(axis=(1, 2))  # (N, 3)


class FakeShared:
    def __init__(self, obj):
        self.obj = obj

    def acquire(self, constructor, tag=None):
        return self.obj


def _pane():
    from apache_beam.utils.windowed_value import PANE_INFO_UNKNOWN

    return PANE_INFO_UNKNOWN


PANE = _pane()


def _item(i, value=None):
    from karpalign.beam.elements import ImageItem

    rng = np.random.default_rng(i)
    image = (np.full((16, 16, 3), value, np.uint8) if value is not None
             else rng.integers(0, 200, (16, 16, 3), dtype=np.uint8))
    regions = np.array([[0, 0, 1, 1], [0, 0, .5, .5]], np.float32)
    return ImageItem(image_id=f"img{i}", split="train", path=f"/data/img{i}.jpg", sentences=["a b"],
                     image=image, regions=regions)


def _expected(item):
    from karpalign.vision.proposers import crop_regions

    return crop_regions(item.image, item.regions, CROP).mean(axis=(1, 2))


def _fn(backbone, in_flight):
    from karpalign.beam.transforms import ExtractFeaturesFn

    fn = ExtractFeaturesFn(FakeShared(backbone), "fake", CROP, in_flight=in_flight)
    fn.setup()
    fn.start_bundle()
    return fn


def test_process_returns_while_the_cnn_is_still_busy_and_outputs_keep_their_batch_window():
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming, WindowedValue

    backbone = FakeBackbone()
    backbone.gate.clear()  # the network "computes" until the test opens the gate
    fn = _fn(backbone, in_flight=1)
    first, second = [_item(0), _item(1)], [_item(2)]
    w1, w2 = IntervalWindow(0, 10), IntervalWindow(10, 20)
    p1, p2 = PaneInfo(True, False, PaneInfoTiming.EARLY, 0, -1), PaneInfo(False, True, PaneInfoTiming.LATE, 3, 2)
    try:
        assert list(fn.process(first, timestamp=1, window=w1, pane_info=p1)) == []  # did not wait for the network
        backbone.gate.set()
        out = list(fn.process(second, timestamp=12, window=w2, pane_info=p2))  # emits the first batch
        assert [o.value.image_id for o in out] == ["img0", "img1"]
        assert all(isinstance(o, WindowedValue) and o.windows == (w1,) and o.timestamp == 1 and o.pane_info == p1
                   for o in out)
        for o, item in zip(out, first):
            np.testing.assert_allclose(o.value.features, _expected(item), rtol=1e-6)
            assert o.value.image is None and o.value.features.dtype == np.float32
        rest = list(fn.finish_bundle())
        assert [o.value.image_id for o in rest] == ["img2"] and rest[0].windows == (w2,) and rest[0].pane_info == p2
        assert backbone.threads and threading.current_thread().name not in backbone.threads
    finally:
        backbone.gate.set()
        fn.teardown()


@pytest.mark.parametrize("in_flight", [0, 1, 3])
def test_every_depth_gives_the_same_outputs_in_input_order(in_flight):
    from apache_beam.transforms.window import GlobalWindow

    backbone = FakeBackbone()
    fn = _fn(backbone, in_flight)
    batches = [[_item(3 * b + j) for j in range(3)] for b in range(4)]
    out = []
    for b, batch in enumerate(batches):
        out += list(fn.process(batch, timestamp=0, window=GlobalWindow(), pane_info=PANE))
        assert len(out) == 3 * max(0, b + 1 - in_flight)  # all but the last in_flight batches are out
    out += list(fn.finish_bundle())
    fn.teardown()
    items = [item for batch in batches for item in batch]
    assert [o.value.image_id for o in out] == [item.image_id for item in items]
    for o, item in zip(out, items):
        np.testing.assert_allclose(o.value.features, _expected(item), rtol=1e-6)
    assert backbone.calls == len(batches)
    if in_flight == 0:
        assert backbone.threads == {threading.current_thread().name}


def test_a_poisoned_image_is_the_only_dead_letter_of_its_batch():
    from apache_beam.transforms.window import GlobalWindow

    from karpalign.beam.elements import STAGE_FEATURES, DeadLetter, is_dead_letter

    backbone = FakeBackbone()
    fn = _fn(backbone, in_flight=1)
    bad_regions = dataclasses.replace(_item(9), regions=np.array([[0, 0, 2, 1]], np.float32))  # ymax > 1
    batch = [_item(0), _item(1, value=POISON), _item(2), bad_regions]
    out = list(fn.process(batch, timestamp=0, window=GlobalWindow(), pane_info=PANE)) + list(fn.finish_bundle())
    fn.teardown()
    good = [o for o in out if not is_dead_letter(o.value)]
    dead = [o for o in out if is_dead_letter(o.value)]
    assert [o.value.image_id for o in good] == ["img0", "img2"]
    assert all(isinstance(d.value, DeadLetter) and d.windows == (GlobalWindow(),) for d in dead)
    letters = {d.value.image_id: d.value for d in dead}
    assert set(letters) == {"img1", "img9"}
    assert all(letter.stage == STAGE_FEATURES for letter in letters.values())
    assert "backbone failed (ValueError: poisoned crop)" in letters["img1"].reason
    assert letters["img9"].reason.startswith("cannot crop regions (ValueError: crop_regions boxes: box 0")
    assert backbone.calls == 1 + 3  # the batch, then each croppable image alone


def test_batches_left_by_a_failed_bundle_are_cancelled_at_the_next_bundle():
    from apache_beam.transforms.window import GlobalWindow

    backbone = FakeBackbone()
    backbone.gate.clear()
    fn = _fn(backbone, in_flight=3)
    try:
        for b in range(3):  # the first blocks in the network, two wait behind it; then the bundle "fails"
            assert list(fn.process([_item(b)], timestamp=0, window=GlobalWindow(), pane_info=PANE)) == []
        fn.start_bundle()  # the runner retries with a new bundle on the same instance
        backbone.gate.set()
        out = list(fn.process([_item(7)], timestamp=0, window=GlobalWindow(), pane_info=PANE))
        out += list(fn.finish_bundle())
    finally:
        backbone.gate.set()
        fn.teardown()
    assert [o.value.image_id for o in out] == ["img7"]
    assert backbone.calls == 2  # the blocked batch finished; the two queued ones never ran


def test_in_flight_must_be_a_non_negative_integer_and_zero_with_adaptive_batches(tmp_path):
    from karpalign.beam.job import ExtractError, extract_config, validate_config

    config = extract_config("d.json", str(tmp_path), cnn_in_flight=-1)
    with pytest.raises(ExtractError, match="extract.cnn_in_flight must be an integer >= 0, got -1"):
        validate_config(config)
    adaptive = extract_config("d.json", str(tmp_path), batch_size=16, min_batch_size=4)
    with pytest.raises(ExtractError, match=r"adaptive batches \(extract.min_batch_size 4 < batch_size 16\) need "
                                           "extract.cnn_in_flight 0, got 1"):
        validate_config(adaptive)
    validate_config(extract_config("d.json", str(tmp_path), batch_size=16, min_batch_size=4, cnn_in_flight=0))
    validate_config(extract_config("d.json", str(tmp_path), batch_size=16, min_batch_size=16))
