"""The OpenAI-compatible HTTP server (`llama3 serve`).

`state` (settings, background model load), `protocol` (request bodies), `openai_format` (response
shapes), `run` (one request's sequences, deadline, metrics, log line), `openai_api` (the routes),
`errors`, `middleware` (keys, body limit, counting), `metrics` (Prometheus) and `app` (assembly).
The page at `/` is `static/index.html`: plain HTML and JS, no build step.
"""
