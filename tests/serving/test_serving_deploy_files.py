"""The TF Serving deployment files in export/ parse with the real protobuf definitions."""

import importlib.util
import pathlib
import re

import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

EXPORT = pathlib.Path(__file__).resolve().parents[2] / "export"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _message_classes(file_name: str, messages: dict) -> dict:
    """Builds message classes from {name: [(field, number, type, label, type_name)]} in package
    tensorflow.serving, for the TF Serving configs that tensorflow-serving-api does not ship."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(name=file_name, package="tensorflow.serving", syntax="proto3",
                                               dependency=["google/protobuf/wrappers.proto"])
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field, number, type_, label, type_name in fields:
            message.field.add(name=field, number=number, type=type_, label=label, type_name=type_name)
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in messages}


def _batching_parameters_class():
    """BatchingParameters from session_bundle_config.proto (the installed module if it exists)."""
    module = "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2"
    if importlib.util.find_spec("tensorflow_serving.servables") and importlib.util.find_spec(module):
        return importlib.import_module(module).BatchingParameters
    opt, rep = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    msg, i64 = _FIELD.TYPE_MESSAGE, _FIELD.TYPE_INT64
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    return _message_classes("karpalign_test_session_bundle_config.proto", {"BatchingParameters": [
        ("max_batch_size", 1, msg, opt, int64_value),
        ("batch_timeout_micros", 2, msg, opt, int64_value),
        ("max_enqueued_batches", 3, msg, opt, int64_value),
        ("num_batch_threads", 4, msg, opt, int64_value),
        ("thread_pool_name", 5, msg, opt, string_value),
        ("allowed_batch_sizes", 6, i64, rep, None),
    ]})["BatchingParameters"]


def _monitoring_config_class():
    opt = _FIELD.LABEL_OPTIONAL
    return _message_classes("karpalign_test_monitoring_config.proto", {
        "PrometheusConfig": [("enable", 1, _FIELD.TYPE_BOOL, opt, None),
                             ("path", 2, _FIELD.TYPE_STRING, opt, None)],
        "MonitoringConfig": [("prometheus_config", 1, _FIELD.TYPE_MESSAGE, opt,
                              ".tensorflow.serving.PrometheusConfig")],
    })["MonitoringConfig"]


def test_models_config_parses_as_model_server_config():
    config = text_format.Parse((EXPORT / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "karpalign"
    assert model.base_path == "/models/karpalign"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


def test_batching_config_parses_and_is_consistent():
    params = text_format.Parse((EXPORT / "batching.config").read_text(), _batching_parameters_class()())
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        assert params.HasField(field) and getattr(params, field).value > 0, field
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(set(sizes)), "allowed_batch_sizes must increase"
    assert sizes[-1] == params.max_batch_size.value, "the last allowed batch size must be max_batch_size"


def test_monitoring_config_parses():
    config = text_format.Parse((EXPORT / "monitoring.config").read_text(), _monitoring_config_class()())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path.startswith("/")


def test_a_typo_would_fail_to_parse():
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 4 }", _batching_parameters_class()())


def test_readme_docker_command_uses_the_files_and_real_flags():
    readme = (EXPORT / "README.md").read_text()
    command = readme[readme.index("docker run"):]
    command = command[:command.index("```")]
    known_flags = {"model_config_file", "model_config_file_poll_wait_seconds", "enable_batching",
                   "batching_parameters_file", "monitoring_config_file", "enable_model_warmup", "port",
                   "rest_api_port", "file_system_poll_wait_seconds", "xla_cpu_compilation_enabled"}
    used = set(re.findall(r"\s--([a-z_]+)=", command))
    assert {"model_config_file", "enable_batching", "batching_parameters_file",
            "enable_model_warmup"} <= used <= known_flags
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert f"/models/config/{name}" in command and (EXPORT / name).is_file()
    assert "-p 8500:8500 -p 8501:8501" in command and "target=/models/karpalign" in command
    # The server's version matches the TensorFlow that writes the models.
    major_minor = ".".join(tf.__version__.split(".")[:2])
    assert re.search(r"-t tensorflow/serving:(\S+)", command).group(1) == f"{major_minor}.0"
    assert not list(EXPORT.glob("*.py")), "export/ holds deployment files only"
