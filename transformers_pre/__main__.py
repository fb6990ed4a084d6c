"""``python -m transformers_pre``: serve the ``search`` transformer with KServe's ModelServer.

Settings come from the defaults, then ``SEARCH_*`` environment variables, then the flags the KServe
controller injects (``--model_name``, ``--predictor_host`` (the ranker), ``--http_port``,
``--grpc_port``, ``--workers``); other flags are ignored.
"""

from __future__ import annotations

import logging
import sys

from shopserve.serving import serve
from shopserve.settings import load_search
from transformers_pre.model import SearchModel


def main(argv: list[str] | None = None) -> None:
    """Load the catalog and tokenizer and serve until SIGINT/SIGTERM."""
    settings = load_search(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = SearchModel(settings)
    model.load()
    serve([model], http_port=settings.http_port, grpc_port=settings.grpc_port,
          workers=settings.workers, bind_host=settings.bind_host,
          max_request_bytes=settings.max_request_bytes, request_logs=settings.request_logs)


if __name__ == "__main__":
    main()
