"""The development server over real gRPC: round trips, TF Serving's error codes, version hot-swap."""

import logging
import os
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from karpalign.serving import client as serving_client
from karpalign.serving.client import CaptionClient
from karpalign.serving.server import ServerConfig, start_server
from karpalign.testing import export_toy_model


@pytest.fixture()
def client(toy_server):
    with CaptionClient(toy_server.address, "toy", timeout=20.0) as c:
        yield c


@pytest.fixture()
def stub(toy_server):
    """A bare TF Serving stub, to check the protocol without our client in between."""
    with grpc.insecure_channel(toy_server.address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_caption_round_trip(client, image_bytes):
    results = client.caption([image_bytes(32, 24), image_bytes(10, 5, "JPEG")])
    assert [r[0][0] for r in results] == ["image 32x24 v1", "image 10x5 v1"]
    assert all(len(r) == 1 and isinstance(r[0][1], float) for r in results)


def test_predict_returns_every_output_with_its_dtype_and_shape(client, image_bytes):
    outputs = client.predict({"images": [image_bytes(7, 3)]})
    assert sorted(outputs) == ["captions", "scores", "token_ids"]
    assert outputs["captions"].shape == (1, 1) and outputs["captions"][0, 0] == b"image 7x3 v1"
    assert outputs["scores"].dtype == np.float32 and outputs["scores"].shape == (1, 1)
    assert outputs["token_ids"].dtype == np.int32
    np.testing.assert_array_equal(outputs["token_ids"], [[[2, 7, 3]]])


def test_other_signature_and_output_filter(client, image_bytes):
    embedded = client.predict({"images": [image_bytes(8, 4)]}, signature="embed_images")
    np.testing.assert_allclose(embedded["embeddings"], [[1.0, 0.5]])
    only_scores = client.predict({"images": [image_bytes(8, 4)]}, output_filter=["scores"])
    assert sorted(only_scores) == ["scores"]


def test_response_names_the_model_version_and_signature(stub, image_bytes):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="toy"))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([image_bytes(2, 2)]))
    response = stub.Predict(request, timeout=20)
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_metadata_lists_signatures_with_specs(client):
    metadata = client.metadata()
    assert sorted(metadata) == ["embed_images", "serving_default"]
    default = metadata["serving_default"]
    assert default["inputs"] == {"images": {"dtype": "string", "shape": [-1]}}
    assert default["outputs"]["captions"] == {"dtype": "string", "shape": [-1, 1]}
    assert default["outputs"]["token_ids"] == {"dtype": "int32", "shape": [-1, 1, 3]}
    assert default["method_name"] == "tensorflow/serving/predict"


def test_metadata_is_a_packed_signature_def_map_like_tf_serving(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="toy"),
                                                             metadata_field=["signature_def"])
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "toy" and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert "serving_default" in signature_map.signature_def
    assert signature_map.signature_def["serving_default"].inputs["images"].dtype == tf.string.as_datatype_enum

    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="toy"), metadata_field=["graph"]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph" in info.value.details()


def test_status_reports_available_version(client):
    assert client.status() == {1: "AVAILABLE"}


@pytest.mark.parametrize("inputs, message", [
    ({"images": np.array([1, 2], np.int32)}, "expects dtype string but the request sent int32"),
    ({"images": np.array([[b"x"]], dtype=object)},
     "expects shape [-1] (rank 1) but the request sent shape [1, 1]"),
    ({"images": np.array([], dtype=object)}, "empty batch"),
    ({"images": [b"definitely not an image"]}, "element 0: not an image"),
    ({"pictures": [b"x"]}, "Sent extra: {pictures}. Missing but required: {images}."),
    ({"images": [b"x"], "extra": [1.0]}, "Sent extra: {extra}."),
], ids=["dtype", "rank", "empty", "not-image", "wrong-key", "extra-key"])
def test_bad_inputs_are_invalid_argument_with_a_clear_message(client, image_bytes, inputs, message):
    with pytest.raises(serving_client.InvalidRequestError) as info:
        client.predict(inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(info.value)
    assert client.caption([image_bytes(5, 6)])[0][0][0] == "image 5x6 v1"  # still serving


def test_oversized_image_is_rejected_before_the_model(client, image_bytes, toy_server):
    limit = toy_server.repository.limits.max_image_pixels
    side = int(limit ** 0.5) + 1
    with pytest.raises(serving_client.InvalidRequestError, match=f"{side}x{side} = {side * side} pixels, "
                                                                 f"above the limit of {limit}"):
        client.caption([image_bytes(4, 4), image_bytes(side, side)])
    assert client.caption([image_bytes(4, 4)])[0][0][0] == "image 4x4 v1"


def test_model_error_is_invalid_argument_and_server_keeps_serving(client, image_bytes):
    truncated = image_bytes(20, 20)[:60]  # header intact, pixel data cut: only the decoder notices
    with pytest.raises(serving_client.InvalidRequestError, match="model call failed"):
        client.caption([truncated])
    assert client.caption([image_bytes(3, 3)])[0][0][0] == "image 3x3 v1"


def test_unknown_model_signature_and_version(toy_server, image_bytes):
    images = [image_bytes(2, 2)]
    with pytest.raises(serving_client.ModelNotFoundError,
                       match=r"Servable not found for request: Latest\(nope\)"):
        CaptionClient(toy_server.address, "nope").caption(images)
    with pytest.raises(serving_client.ModelNotFoundError, match=r"Specific\(toy, 9\)"):
        CaptionClient(toy_server.address, "toy", version=9).caption(images)
    with pytest.raises(serving_client.SignatureNotFoundError) as info:
        CaptionClient(toy_server.address, "toy", signature="nosuch").caption(images)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION  # as TF Serving answers
    assert 'Serving signature key "nosuch" not found.' in str(info.value)


def test_request_over_the_size_limit_is_refused(client, toy_server, image_bytes):
    blob = os.urandom(300 * 1024)  # above the fixture's 256 KiB max_request_bytes
    with pytest.raises(serving_client.RequestTooLargeError):
        client.predict({"images": [blob]})
    assert client.caption([image_bytes(2, 3)])[0][0][0] == "image 2x3 v1"


def test_classify_is_unimplemented(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="toy")),
                      timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_new_version_is_hot_swapped_without_failing_requests(tmp_path, image_bytes):
    export_toy_model(str(tmp_path / "toy"), version=1)
    config = ServerConfig(model_base_path=str(tmp_path), model_name="toy", port=0, poll_seconds=0.2,
                          workers=4)
    failures, captions, stop = [], [], threading.Event()
    image = image_bytes(6, 4)

    with start_server(config) as running:
        def hammer():
            with CaptionClient(running.address, "toy", timeout=30.0) as c:
                while not stop.is_set():
                    try:
                        captions.append(c.caption([image])[0][0][0])
                    except Exception as e:  # any failure is a test failure, reported below
                        failures.append(repr(e))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: len(captions) >= 5, "requests on version 1")
            export_toy_model(str(tmp_path / "toy"), version=2)  # written in place while serving
            with CaptionClient(running.address, "toy") as c:
                _wait_for(lambda: c.status().get(2) == "AVAILABLE", "version 2 to load")
                switched_at = len(captions)
                _wait_for(lambda: len(captions) >= switched_at + 10, "requests after the switch")

                # A broken newer version is logged and skipped; version 2 stays in service.
                broken = tmp_path / "toy" / "3"
                broken.mkdir()
                (broken / "saved_model.pb").write_bytes(b"not a protobuf")
                _wait_for(lambda: c.status().get(3) == "END", "the failed load of version 3")
                assert "saved_model.pb" in running.repository.status()[3][1]
                assert c.caption([image])[0][0][0] == "image 6x4 v2"
                with CaptionClient(running.address, "toy", version=1) as pinned:  # num_versions=2 keeps v1
                    assert pinned.caption([image])[0][0][0] == "image 6x4 v1"
        finally:
            stop.set()
            for t in threads:
                t.join()

    assert failures == []
    assert captions[0] == "image 6x4 v1"
    # At most one request per thread was in flight on version 1 when version 2 went into service.
    assert set(captions[switched_at + len(threads):]) == {"image 6x4 v2"}


def test_one_debug_log_line_per_request(client, image_bytes, caplog):
    with caplog.at_level(logging.DEBUG, logger="karpalign.serving.server"):
        client.caption([image_bytes(2, 2), image_bytes(3, 3)])
        with pytest.raises(serving_client.InvalidRequestError):
            client.predict({"images": [b"nope"]})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Predict ")]
    assert len(lines) == 2
    assert "model=toy version=1 signature=serving_default inputs=images[2] status=OK" in lines[0]
    assert "status=INVALID_ARGUMENT" in lines[1]


def test_status_of_unknown_model_is_not_found(toy_server):
    with pytest.raises(serving_client.ModelNotFoundError, match="Could not find any versions of model nope"):
        CaptionClient(toy_server.address, "nope").status()
