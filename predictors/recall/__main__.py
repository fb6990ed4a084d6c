"""``python -m predictors.recall``: serve ``mf-recall`` with KServe's ModelServer.

Settings come from the defaults, then ``RECALL_*`` environment variables, then the flags the KServe
controller injects (``--model_name``, ``--http_port``, ``--grpc_port``, ``--workers``).
"""

from __future__ import annotations

import logging
import sys

from predictors.recall.model import RecallModel
from shopserve.serving import serve
from shopserve.settings import RecallSettings, load


def main(argv: list[str] | None = None) -> None:
    """Load the bundle and serve until SIGINT/SIGTERM."""
    settings = load(RecallSettings, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = RecallModel(settings)
    model.load()
    serve([model], http_port=settings.http_port, grpc_port=settings.grpc_port,
          workers=settings.workers, bind_host=settings.bind_host,
          max_request_bytes=settings.max_request_bytes, request_logs=settings.request_logs)


if __name__ == "__main__":
    main()
