"""Local Triton launch details: settings, command line, stub environment, local repository, the
launcher's process."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from predictors.ranker.__main__ import parse_args
from predictors.ranker.server import (
    LocalServer,
    RankerSettings,
    TritonServer,
    local_repository,
    prepare_backends,
    server_command,
    server_env,
    triton_dist,
)
from predictors.ranker.triton_repo import (
    TritonModelConfig,
    read_config,
    write_bundle_repository,
    write_repository,
)
from shopserve.errors import BundleError
from shopserve.process import ChildProcess
from shopserve.protocol import RANKER_MODEL


def test_settings_defaults_are_the_design_ports_on_loopback() -> None:
    settings = RankerSettings()
    assert (settings.host, settings.http_port, settings.grpc_port, settings.metrics_port) == (
        "127.0.0.1", 8000, 8001, 8002)  # fmt: skip


def test_the_sessions_threads_default_to_the_cpus_the_process_may_use() -> None:
    assert RankerSettings().threads == len(os.sched_getaffinity(0))


def test_settings_read_the_ranker_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKER_HTTP_PORT", "9100")
    monkeypatch.setenv("RANKER_THREADS", "4")
    settings = RankerSettings()
    assert settings.http_port == 9100 and settings.threads == 4


def test_every_settings_field_is_documented() -> None:
    source = Path(__file__).parents[4].joinpath("predictors/ranker/server.py").read_text()
    for name in RankerSettings.model_fields:
        block = source.split(f"\n    {name}:", 1)[1].split("\n", 2)[1]
        assert block.strip().startswith('"""'), f"RankerSettings.{name} lacks a docstring"


def test_cli_overrides_ports_and_ignores_unknown_flags() -> None:
    assert parse_args(["--http_port", "1", "--grpc-port", "2", "--model_name", "x"]) == {
        "http_port": 1, "grpc_port": 2}  # fmt: skip


def test_command_binds_every_endpoint_to_the_host(tmp_path: Path) -> None:
    settings = RankerSettings(http_port=1, grpc_port=2, metrics_port=3)
    command = server_command(triton_dist(), tmp_path / "b", tmp_path / "r", settings)
    assert Path(command[0]).name == "tritonserver" and Path(command[0]).is_file()
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--http-port=1", "--grpc-port=2",
                 "--metrics-port=3", f"--model-repository={tmp_path / 'r'}"):  # fmt: skip
        assert flag in command


def test_stub_environment_puts_this_libpython_first() -> None:
    env = server_env(triton_dist())
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert "site-packages" in env["PYTHONPATH"]


def test_backend_directory_holds_the_stub_of_this_python(tmp_path: Path) -> None:
    backends = prepare_backends(tmp_path)
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.is_file() and stub.stat().st_mode & 0o111
    assert (backends / "python" / "libtriton_python.so").is_file()


def test_local_repository_keeps_the_bundles_limits(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not parsed here")
    fp32 = tmp_path / "model-fp32.onnx"
    fp32.write_bytes(b"the GPU graph")
    bundle = tmp_path / "bundle"
    write_bundle_repository(bundle, onnx, fp32, TritonModelConfig(
        max_sequence_length=40, max_batch_size=128, extra_parameters={"vocab_size": "30522"}))
    settings = RankerSettings(threads=3, instances=2)
    repo = local_repository(bundle, tmp_path / "work", settings)
    config = read_config(repo / RANKER_MODEL / "config.pbtxt")
    assert config.backend == "python" and config.platform is None
    assert config.max_batch_size == 128 and config.instance_kind == "KIND_CPU"
    assert config.parameters == {"max_sequence_length": "40", "vocab_size": "30522",
                                 "intra_op_thread_count": "3"}  # fmt: skip
    assert (repo / RANKER_MODEL / "1" / "model.py").is_file()
    assert (repo / RANKER_MODEL / "1" / "model.onnx").read_bytes() == b"not parsed here"


def test_local_repository_serves_the_file_the_cpu_config_names(tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu.onnx", tmp_path / "gpu.onnx"
    cpu.write_bytes(b"cpu graph")
    gpu.write_bytes(b"gpu graph")
    bundle = tmp_path / "bundle"
    model_dir = write_bundle_repository(bundle, cpu, gpu, TritonModelConfig())
    # The CPU config, not a hard-coded name, says which file the CPU serves.
    cpu_config = model_dir / "configs" / "cpu.pbtxt"
    cpu_config.write_text(cpu_config.read_text().replace('"model.onnx"', '"other.onnx"'))
    (model_dir / "1" / "model.onnx").rename(model_dir / "1" / "other.onnx")
    repo = local_repository(bundle, tmp_path / "work", RankerSettings())
    assert (repo / RANKER_MODEL / "1" / "model.onnx").read_bytes() == b"cpu graph"
    (model_dir / "1" / "other.onnx").unlink()
    with pytest.raises(BundleError, match="other.onnx"):
        local_repository(bundle, tmp_path / "work2", RankerSettings())


def test_local_repository_reads_a_bundle_without_a_cpu_config(tmp_path: Path) -> None:
    """A bundle of one ``config.pbtxt`` (before the CPU config existed) still serves locally."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"one graph")
    bundle = tmp_path / "bundle"
    write_repository(bundle, onnx, TritonModelConfig(max_sequence_length=24))
    repo = local_repository(bundle, tmp_path / "work", RankerSettings())
    assert read_config(repo / RANKER_MODEL / "config.pbtxt").parameters["max_sequence_length"] == "24"
    assert (repo / RANKER_MODEL / "1" / "model.onnx").read_bytes() == b"one graph"


class _Failing(LocalServer):
    """A launcher whose process exits at once, as Triton does on a bad repository."""

    name = "failing"

    def _prepare(self) -> ChildProcess:
        self._prepare_workdir()
        return self._child([sys.executable, "-c", "raise SystemExit(2)"], {})

    def is_ready(self) -> bool:
        return False


def test_launcher_reports_an_early_exit_and_cleans_its_workdir() -> None:
    server = _Failing(RankerSettings(exit_timeout_s=1))
    server.start()
    assert server.child is not None and server.child.stop_timeout == 11.0
    assert server.process is not None and server.workdir is not None
    with pytest.raises(RuntimeError, match="failing exited with 2"):
        server.wait_ready(timeout_s=30)
    workdir = server.workdir
    assert server.stop() == 2
    assert not workdir.exists()


def test_triton_process_runs_in_its_workdir_with_the_stub_environment(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not parsed here")
    bundle = tmp_path / "bundle"
    write_repository(bundle, onnx, TritonModelConfig())
    server = TritonServer(RankerSettings(bundle=bundle, workdir=tmp_path / "work", verify_bundle=False))
    child = server._prepare()
    assert Path(child.argv[0]).name == "tritonserver" and child.cwd == tmp_path / "work"
    assert child.env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert child.log_path is None  # Triton's output stays the launcher's (the ranker's log)
    assert server.stop() is None  # never started
