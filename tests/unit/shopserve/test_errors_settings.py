"""The error table and settings precedence."""

from http import HTTPStatus

import pytest
from grpc import StatusCode

from shopserve.errors import (
    ERRORS,
    CircuitOpen,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    UpstreamOverloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shopserve.settings import RecallSettings, SearchSettings, cli_overrides, load


@pytest.mark.parametrize(
    ("error", "http", "grpc"),
    [
        (InvalidInput, HTTPStatus.BAD_REQUEST, StatusCode.INVALID_ARGUMENT),
        (ModelNotFound, HTTPStatus.NOT_FOUND, StatusCode.NOT_FOUND),
        (ModelNotReady, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
        (UpstreamUnavailable, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
        (CircuitOpen, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
        (UpstreamOverloaded, HTTPStatus.SERVICE_UNAVAILABLE, StatusCode.UNAVAILABLE),
        (UpstreamTimeout, HTTPStatus.GATEWAY_TIMEOUT, StatusCode.DEADLINE_EXCEEDED),
        (InferenceFailed, HTTPStatus.INTERNAL_SERVER_ERROR, StatusCode.INTERNAL),
    ],
)
def test_one_table_for_rest_and_grpc(error, http, grpc):
    exc = error("input 'user_id': bad")
    assert exc.http_status == http and exc.status_code == grpc
    assert exc.body() == {"error": "input 'user_id': bad"}
    assert str(exc) == exc.details == "input 'user_id': bad"


def test_every_error_is_listed():
    assert len(ERRORS) == 8
    # Skipping an overloaded dependency is a kind of unavailability, not of failure to handle.
    assert issubclass(UpstreamOverloaded, UpstreamUnavailable)
    assert not issubclass(UpstreamOverloaded, CircuitOpen)


def test_settings_precedence_defaults_env_cli(monkeypatch):
    assert RecallSettings().http_port == 8090
    monkeypatch.setenv("RECALL_HTTP_PORT", "9000")
    monkeypatch.setenv("RECALL_TOP_K", "50")
    assert RecallSettings().http_port == 9000
    settings = load(RecallSettings, ["--http_port", "9100", "--unknown", "x", "--workers", "2"])
    assert (settings.http_port, settings.top_k, settings.workers) == (9100, 50, 2)


def test_cli_ignores_unknown_flags():
    assert cli_overrides(["--model_name", "m", "--enable_docs_url", "true"]) == {"model_name": "m"}


def test_invalid_env_is_refused(monkeypatch):
    monkeypatch.setenv("RECALL_INDEX", "lsh")
    with pytest.raises(ValueError, match="index"):
        RecallSettings()


def test_quiet_logs_cache_and_admission_settings(monkeypatch):
    search, recall = SearchSettings(), RecallSettings()
    assert search.request_logs is False and recall.request_logs is False
    assert search.relevance_cache_enabled and search.relevance_cache_entries == 100_000
    assert search.ranker_max_concurrency == 4 and search.failure_log_interval_ms == 10_000
    monkeypatch.setenv("SEARCH_REQUEST_LOGS", "true")
    monkeypatch.setenv("SEARCH_RELEVANCE_CACHE_ENABLED", "false")
    monkeypatch.setenv("SEARCH_RANKER_MAX_CONCURRENCY", "0")
    monkeypatch.setenv("RECALL_REQUEST_LOGS", "1")
    search, recall = SearchSettings(), RecallSettings()
    assert search.request_logs and recall.request_logs
    assert not search.relevance_cache_enabled and search.ranker_max_concurrency == 0
    monkeypatch.setenv("SEARCH_RANKER_MAX_CONCURRENCY", "-1")
    with pytest.raises(ValueError, match="ranker_max_concurrency"):
        SearchSettings()
