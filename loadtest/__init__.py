"""Load tests of the ``search`` model: a v2 traffic mix for locust, load shapes and SLOs.

* :mod:`loadtest.locustfile`: the locust users (run by ``python -m locust -f``; imports locust, so
  never import it into another process: locust monkey-patches with gevent on import);
* :mod:`loadtest.traffic`: the request mix drawn from a bundle's generated query log;
* :mod:`loadtest.tail`: the long tail of that mix, queries composed fresh from the catalog;
* :mod:`loadtest.shapes`: steady, step-ramp and spike load plans;
* :mod:`loadtest.slo`: service-level objectives, loaded from a file or flags, and their check;
* :mod:`loadtest.runner`: run locust headless in a child process and read its summary.

Only :mod:`loadtest.locustfile` imports locust; the rest is plain Python that the CLI, the canary
gate and the tests import freely. Imports only ``shopserve`` (DESIGN.md, "Layout").
"""
