"""The OpenAI-compatible HTTP API in front of the queue (`ultra api`).

- ``app``: the FastAPI application, OpenAI's error shape, the body-size bound;
- ``tenants``: tenants and their keys (hashed in SQL); ``auth``: who is calling, and its rate;
- ``chat``: ``/v1/chat/completions`` and ``/v1/jobs/{id}``, each request one job; ``waiter``: how a request
  waits for its job (one subscriber per process, no polling per request); ``completions``: the OpenAI
  shapes of a job's result;
- ``files`` and ``batches``: OpenAI's Files and Batch APIs, every batch line one job of the batch;
- ``server``: the secure-by-default launcher; ``cli``: ``ultra api``, ``ultra keys``, ``ultra batches``;
  ``tasks``: beat's task that finishes batches nobody reads.
"""
